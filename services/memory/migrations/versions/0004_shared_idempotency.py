"""The idempotency records in the shared shape (sessionkit_server.common.idempotency): one table shape
and one migration pattern for every service's keys.

Revision ID: m0004
Revises: m0003
Create Date: 2026-12-01
"""

from sessionkit_server.common import idempotency_migration

revision = "m0004"
down_revision = "m0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    idempotency_migration.reshape("sk_memory_idempotency")


def downgrade() -> None:
    idempotency_migration.unshape("sk_memory_idempotency", None, response_nullable=True)
