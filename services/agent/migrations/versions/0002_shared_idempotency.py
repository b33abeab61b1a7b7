"""The idempotency records in the shared shape (sessionkit_server.common.idempotency): one table shape
and one migration pattern for every service's keys.

Revision ID: a0002
Revises: a0001
Create Date: 2026-12-01
"""

from sessionkit_server.common import idempotency_migration

revision = "a0002"
down_revision = "a0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    idempotency_migration.reshape("sk_agent_idempotency", scope_column="session_id")


def downgrade() -> None:
    idempotency_migration.unshape("sk_agent_idempotency", "session_id", response_nullable=True)
