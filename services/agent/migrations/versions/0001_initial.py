"""Agent definitions, conversation leases, idempotency records.

Revision ID: a0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "a0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.String(128)


def _session_columns() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("app_name", ID, primary_key=True),
        sa.Column("user_id", ID, primary_key=True),
        sa.Column("session_id", ID, primary_key=True),
    ]


def upgrade() -> None:
    op.create_table(
        "sk_agents",
        *_session_columns(),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("definition", sa.LargeBinary, nullable=False),
        sa.Column("session_create_us", sa.BigInteger, nullable=False),
        sa.Column("create_us", sa.BigInteger, nullable=False),
        sa.Column("update_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "sk_agent_leases",
        *_session_columns(),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("expire_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "sk_agent_idempotency",
        *_session_columns(),
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=True),
        sa.Column("create_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_sk_agent_idempotency_time", "sk_agent_idempotency", ["create_us"])


def downgrade() -> None:
    op.drop_index("ix_sk_agent_idempotency_time", table_name="sk_agent_idempotency")
    op.drop_table("sk_agent_idempotency")
    op.drop_table("sk_agent_leases")
    op.drop_table("sk_agents")
