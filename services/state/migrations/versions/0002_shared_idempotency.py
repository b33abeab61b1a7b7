"""Idempotency records in the shared shape (sessionkit_server.common.idempotency): keyed by app, user,
scope (the session id) and key, with the kind of write that used the key, instead of by the session's
row id. Existing records move with their session's names, so a key in use keeps replaying.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

from sessionkit_server.common import idempotency_migration

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# The kinds of write, as sessionkit_server.state.store names them (a migration keeps its own copy).
STATE_WRITE = "a state write"
EVENT_APPEND = "an event append"
EVENT_PREFIX = b"event:"  # an event append's stored response started with this; a state write's did not

sessions = sa.table(
    "sk_sessions",
    sa.column("pk"),
    sa.column("app_name"),
    sa.column("user_id"),
    sa.column("session_id"),
)


def _old_rows(old: str) -> sa.Select[Any]:
    source = sa.table(old, *[sa.column(c) for c in ("session_pk", "key", "response", "create_us")])
    is_event = sa.func.substr(source.c.response, 1, len(EVENT_PREFIX)) == sa.literal(
        EVENT_PREFIX, sa.LargeBinary
    )
    return sa.select(
        sessions.c.app_name,
        sessions.c.user_id,
        source.c.key,
        sa.case((is_event, EVENT_APPEND), else_=STATE_WRITE),
        source.c.response,
        source.c.create_us,
        sessions.c.session_id,
    ).join_from(source, sessions, sessions.c.pk == source.c.session_pk)


def upgrade() -> None:
    idempotency_migration.reshape("sk_idempotency", rows=_old_rows)


def downgrade() -> None:
    op.drop_index("ix_sk_idempotency_time", table_name="sk_idempotency")
    op.rename_table("sk_idempotency", "sk_idempotency_new")
    op.create_table(
        "sk_idempotency",
        sa.Column(
            "session_pk", sa.BigInteger, sa.ForeignKey("sk_sessions.pk", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("response", sa.LargeBinary, nullable=False),
        sa.Column("create_us", sa.BigInteger, nullable=False),
    )
    n = sa.table(
        "sk_idempotency_new",
        *[sa.column(c) for c in ("app_name", "user_id", "scope", "key", "response", "create_us")],
    )
    query = (
        sa.select(sessions.c.pk, n.c.key, n.c.response, n.c.create_us)
        .join_from(
            n,
            sessions,
            sa.and_(
                sessions.c.app_name == n.c.app_name,
                sessions.c.user_id == n.c.user_id,
                sessions.c.session_id == n.c.scope,
            ),
        )
        .where(n.c.response.is_not(None))
    )
    target = sa.table(
        "sk_idempotency", *[sa.column(c) for c in ("session_pk", "key", "response", "create_us")]
    )
    op.execute(target.insert().from_select(["session_pk", "key", "response", "create_us"], query))
    op.drop_table("sk_idempotency_new")
    op.create_index("ix_sk_idempotency_time", "sk_idempotency", ["create_us"])
