"""The knowledge service's tables. Source and chunk rows are the source of truth; the vector index
follows them through the outbox (written in the rows' transaction), and the lexical index is kept by
the database (SQLite FTS5 triggers, PostgreSQL's generated tsvector column)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
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

#: Scope kinds (KnowledgeScope.Kind).
SESSION, USER, COLLECTION = 1, 2, 3
#: Source kinds (KnowledgeSource.Kind).
FILE, URL, TEXT = 1, 2, 3

sources = Table(
    "sk_knowledge_sources",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("id", String(40), nullable=False, unique=True),
    Column("app_name", ID, nullable=False),
    # The scope: SESSION (owner = user_id, scope_key = session_id), USER (owner = user_id,
    # scope_key = ""), COLLECTION (owner = "", scope_key = the collection).
    Column("scope_kind", SmallInteger, nullable=False),
    Column("owner", ID, nullable=False),
    Column("scope_key", ID, nullable=False),
    Column("name", String(512), nullable=False),
    Column("kind", SmallInteger, nullable=False),
    # The session that added (or last replaced) it.
    Column("user_id", ID, nullable=False),
    Column("session_id", ID, nullable=False),
    Column("uri", Text, nullable=False),
    Column("content_type", String(128), nullable=False),
    Column("title", Text, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("chunk_count", Integer, nullable=False),
    Column("chunker", Text, nullable=False),
    Column("metadata", Text, nullable=False),
    # The content version searches see: chunks of other versions are never returned.
    Column("version", Integer, nullable=False),
    Column("create_us", BigInteger, nullable=False),
    Column("update_us", BigInteger, nullable=False),
    UniqueConstraint("app_name", "scope_kind", "owner", "scope_key", "name", name="uq_sk_knowledge_name"),
)

chunks = Table(
    "sk_knowledge_chunks",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("id", String(48), nullable=False, unique=True),
    Column("source_id", String(40), nullable=False),
    Column("version", Integer, nullable=False),
    Column("app_name", ID, nullable=False),
    Column("chunk_index", Integer, nullable=False),
    Column("text", Text, nullable=False),
    Column("page", Integer, nullable=False),
    Column("start_char", BigInteger, nullable=False),
    Column("end_char", BigInteger, nullable=False),
    Column("heading_path", Text, nullable=False),
    Index("ix_sk_knowledge_chunks_source", "source_id", "version", "chunk_index"),
)

outbox = Table(
    "sk_knowledge_outbox",
    metadata,
    Column("id", PK, primary_key=True, autoincrement=True),
    Column("chunk_id", String(48), nullable=False),
    Column("app_name", ID, nullable=False),
    # "upsert" or "delete"
    Column("action", String(8), nullable=False),
    # The logical name of the vector's collection (its scope's partition); NULL for entries written
    # before partitions (the app's single collection of old).
    Column("vector_collection", Text, nullable=True),
)

#: The response of each write made with an idempotency key, for 24 hours: a repeat of the key by the
#: same (app_name, user_id) gets it back instead of running again. Written in the write's transaction.
idempotency = idempotency_table(metadata, "sk_knowledge_idempotency")
