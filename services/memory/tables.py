"""The memory service's tables. The rows are the source of truth; the vector index is derived from
them through the outbox (written in the same transaction as the row, applied after commit and again
at start-up), and the lexical index is maintained by the database itself (SQLite FTS5 triggers,
PostgreSQL's generated tsvector column)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
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
PK = BigInteger().with_variant(Integer, "sqlite")

SHORT, LONG = 1, 2

memories = Table(
    "sk_memories",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("id", String(40), nullable=False, unique=True),
    Column("app_name", ID, nullable=False),
    Column("user_id", ID, nullable=False),
    # The session that wrote it (short-term memories belong to it).
    Column("session_id", ID, nullable=False),
    Column("memory_type", SmallInteger, nullable=False),
    # Dedup scope: the session id for short-term memories, "" for the user's long-term memories.
    Column("scope", ID, nullable=False),
    Column("text", Text, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("quality", Float, nullable=False),
    Column("metadata", Text, nullable=False),
    Column("create_us", BigInteger, nullable=False),
    Column("update_us", BigInteger, nullable=False),
    Column("expire_us", BigInteger, nullable=True),
    Column("revision", BigInteger, nullable=False),
    # Lexical context (migration m0005): the text of the memory its session wrote just before it,
    # indexed beside its own (a reply is found by the words of the question it answers).
    Column("context", Text, nullable=True),
    UniqueConstraint(
        "app_name", "user_id", "memory_type", "scope", "content_hash", name="uq_sk_memories_content"
    ),
    Index("ix_sk_memories_owner", "app_name", "user_id", "memory_type", "scope", "create_us"),
    Index("ix_sk_memories_session", "app_name", "user_id", "session_id", "memory_type", "pk"),
)

changes = Table(
    "sk_memory_changes",
    metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("memory_id", String(40), nullable=False),
    Column("app_name", ID, nullable=False),
    Column("user_id", ID, nullable=False),
    Column("session_id", ID, nullable=False),
    Column("memory_type", SmallInteger, nullable=False),
    Column("operation", SmallInteger, nullable=False),
    Column("old_text", Text, nullable=True),
    Column("new_text", Text, nullable=True),
    Column("old_quality", Float, nullable=True),
    Column("new_quality", Float, nullable=True),
    Column("old_metadata", Text, nullable=True),
    Column("new_metadata", Text, nullable=True),
    Column("actor", String(128), nullable=False),
    Column("revision", BigInteger, nullable=False),
    Column("time_us", BigInteger, nullable=False),
    Index("ix_sk_memory_changes_memory", "memory_id", "id"),
)

outbox = Table(
    "sk_memory_outbox",
    metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("memory_id", String(40), nullable=False),
    Column("app_name", ID, nullable=False),
    # "upsert" or "delete"
    Column("action", String(8), nullable=False),
    Column("create_us", BigInteger, nullable=False),
    # The vector index collection (partition) holding the memory's vector; NULL for entries written
    # before partitions (migration m0003).
    Column("vector_collection", Text, nullable=True),
)

# The responses of idempotent writes (AddMemory, UpdateMemory, DeleteMemory, ClearMemories,
# ExtractMemories), by (app, user, key), kept 24 hours; an ExtractMemories call claims its key first.
idempotency = idempotency_table(metadata, "sk_memory_idempotency")
