"""Idempotency records of memory writes.

Revision ID: m0002
Revises: m0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "m0002"
down_revision = "m0001"
branch_labels = None
depends_on = None

ID = sa.String(128)


def upgrade() -> None:
    op.create_table(
        "sk_memory_idempotency",
        sa.Column("app_name", ID, primary_key=True),
        sa.Column("user_id", ID, primary_key=True),
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=True),
        sa.Column("create_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_sk_memory_idempotency_time", "sk_memory_idempotency", ["create_us"])


def downgrade() -> None:
    op.drop_index("ix_sk_memory_idempotency_time", table_name="sk_memory_idempotency")
    op.drop_table("sk_memory_idempotency")
