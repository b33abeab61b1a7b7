"""The idempotency records in the shared shape (sessionkit_server.common.idempotency): one table shape
and one migration pattern for every service's keys.

Revision ID: k0004
Revises: k0003
Create Date: 2026-12-01
"""

from sessionkit_server.common import idempotency_migration

revision = "k0004"
down_revision = "k0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    idempotency_migration.reshape("sk_knowledge_idempotency")


def downgrade() -> None:
    idempotency_migration.unshape("sk_knowledge_idempotency", None, response_nullable=False)
