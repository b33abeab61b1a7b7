"""The state service's tables (SQLAlchemy Core). Alembic migrations in migrations/ create them.

Times are integer microseconds since the epoch (portable, exact, comparable on every backend);
JSON is stored as compact text, so what is stored is exactly what size limits counted.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from sessionkit_server.common.idempotency import idempotency_table

metadata = MetaData()

ID = String(128)

sessions = Table(
    "sk_sessions",
    metadata,
    Column("pk", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("app_name", ID, nullable=False),
    Column("user_id", ID, nullable=False),
    Column("session_id", ID, nullable=False),
    Column("state", Text, nullable=False, default="{}"),
    Column("version", BigInteger, nullable=False, default=0),
    Column("event_count", BigInteger, nullable=False, default=0),
    Column("create_us", BigInteger, nullable=False),
    Column("update_us", BigInteger, nullable=False),
    Column("ttl_seconds", BigInteger, nullable=True),
    Column("expire_us", BigInteger, nullable=True),
    UniqueConstraint("app_name", "user_id", "session_id", name="uq_sk_sessions_ref"),
    Index("ix_sk_sessions_expire", "expire_us"),
)

user_states = Table(
    "sk_user_states",
    metadata,
    Column("app_name", ID, primary_key=True),
    Column("user_id", ID, primary_key=True),
    Column("state", Text, nullable=False, default="{}"),
    Column("update_us", BigInteger, nullable=False),
)

app_states = Table(
    "sk_app_states",
    metadata,
    Column("app_name", ID, primary_key=True),
    Column("state", Text, nullable=False, default="{}"),
    Column("update_us", BigInteger, nullable=False),
)

state_versions = Table(
    "sk_state_versions",
    metadata,
    Column("session_pk", BigInteger, ForeignKey("sk_sessions.pk", ondelete="CASCADE"), primary_key=True),
    Column("version", BigInteger, primary_key=True),
    Column("operation", SmallInteger, nullable=False),
    Column("key", String(256), nullable=False, default=""),
    Column("value", Text, nullable=True),
    Column("state", Text, nullable=False),
    Column("time_us", BigInteger, nullable=False),
)

events = Table(
    "sk_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("session_pk", BigInteger, ForeignKey("sk_sessions.pk", ondelete="CASCADE"), nullable=False),
    Column("role", String(64), nullable=False),
    Column("content", Text, nullable=False),
    Column("author", String(128), nullable=False, default=""),
    Column("metadata", Text, nullable=False, default="{}"),
    Column("create_us", BigInteger, nullable=False),
    Index("ix_sk_events_session", "session_pk", "id"),
)

# Idempotency records in the shape every service shares; scope is the session id (a key belongs to one
# session, and goes with it when the session is deleted).
idempotency = idempotency_table(metadata, "sk_idempotency")
