"""Initial state schema: sessions, user and app scopes, versions, events, idempotency records.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "sk_sessions",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("app_name", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("session_id", sa.String(128), nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("event_count", sa.BigInteger, nullable=False),
        sa.Column("create_us", sa.BigInteger, nullable=False),
        sa.Column("update_us", sa.BigInteger, nullable=False),
        sa.Column("ttl_seconds", sa.BigInteger, nullable=True),
        sa.Column("expire_us", sa.BigInteger, nullable=True),
        sa.UniqueConstraint("app_name", "user_id", "session_id", name="uq_sk_sessions_ref"),
    )
    op.create_index("ix_sk_sessions_expire", "sk_sessions", ["expire_us"])
    op.create_table(
        "sk_user_states",
        sa.Column("app_name", sa.String(128), primary_key=True),
        sa.Column("user_id", sa.String(128), primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("update_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "sk_app_states",
        sa.Column("app_name", sa.String(128), primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("update_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "sk_state_versions",
        sa.Column(
            "session_pk", sa.BigInteger, sa.ForeignKey("sk_sessions.pk", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("version", sa.BigInteger, primary_key=True),
        sa.Column("operation", sa.SmallInteger, nullable=False),
        sa.Column("key", sa.String(256), nullable=False),
        sa.Column("value", sa.Text, nullable=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("time_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "sk_events",
        sa.Column("id", PK, primary_key=True, autoincrement=True),
        sa.Column(
            "session_pk", sa.BigInteger, sa.ForeignKey("sk_sessions.pk", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("author", sa.String(128), nullable=False),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("create_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_sk_events_session", "sk_events", ["session_pk", "id"])
    op.create_table(
        "sk_idempotency",
        sa.Column(
            "session_pk", sa.BigInteger, sa.ForeignKey("sk_sessions.pk", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("response", sa.LargeBinary, nullable=False),
        sa.Column("create_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_sk_idempotency_time", "sk_idempotency", ["create_us"])


def downgrade() -> None:
    for table in ("sk_idempotency", "sk_events", "sk_state_versions", "sk_app_states", "sk_user_states"):
        op.drop_table(table)
    op.drop_table("sk_sessions")
