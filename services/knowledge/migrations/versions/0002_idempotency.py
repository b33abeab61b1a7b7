"""Idempotency records of knowledge writes.

Revision ID: k0002
Revises: k0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "k0002"
down_revision = "k0001"
branch_labels = None
depends_on = None

ID = sa.String(128)


def upgrade() -> None:
    op.create_table(
        "sk_knowledge_idempotency",
        sa.Column("app_name", ID, primary_key=True),
        sa.Column("user_id", ID, primary_key=True),
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=False),
        sa.Column("create_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_sk_knowledge_idempotency_time", "sk_knowledge_idempotency", ["create_us"])


def downgrade() -> None:
    op.drop_index("ix_sk_knowledge_idempotency_time", table_name="sk_knowledge_idempotency")
    op.drop_table("sk_knowledge_idempotency")
