"""Memories, their change history, the vector outbox, and the lexical index.

Revision ID: m0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "m0001"
down_revision = None
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer, "sqlite")
ID = sa.String(128)


def upgrade() -> None:
    op.create_table(
        "sk_memories",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(40), nullable=False, unique=True),
        sa.Column("app_name", ID, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("session_id", ID, nullable=False),
        sa.Column("memory_type", sa.SmallInteger, nullable=False),
        sa.Column("scope", ID, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("quality", sa.Float, nullable=False),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("create_us", sa.BigInteger, nullable=False),
        sa.Column("update_us", sa.BigInteger, nullable=False),
        sa.Column("expire_us", sa.BigInteger, nullable=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.UniqueConstraint(
            "app_name", "user_id", "memory_type", "scope", "content_hash", name="uq_sk_memories_content"
        ),
    )
    op.create_index(
        "ix_sk_memories_owner", "sk_memories", ["app_name", "user_id", "memory_type", "scope", "create_us"]
    )
    op.create_table(
        "sk_memory_changes",
        sa.Column("id", PK, primary_key=True, autoincrement=True),
        sa.Column("memory_id", sa.String(40), nullable=False),
        sa.Column("app_name", ID, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("session_id", ID, nullable=False),
        sa.Column("memory_type", sa.SmallInteger, nullable=False),
        sa.Column("operation", sa.SmallInteger, nullable=False),
        sa.Column("old_text", sa.Text, nullable=True),
        sa.Column("new_text", sa.Text, nullable=True),
        sa.Column("old_quality", sa.Float, nullable=True),
        sa.Column("new_quality", sa.Float, nullable=True),
        sa.Column("old_metadata", sa.Text, nullable=True),
        sa.Column("new_metadata", sa.Text, nullable=True),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("time_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_sk_memory_changes_memory", "sk_memory_changes", ["memory_id", "id"])
    op.create_table(
        "sk_memory_outbox",
        sa.Column("id", PK, primary_key=True, autoincrement=True),
        sa.Column("memory_id", sa.String(40), nullable=False),
        sa.Column("app_name", ID, nullable=False),
        sa.Column("action", sa.String(8), nullable=False),
        sa.Column("create_us", sa.BigInteger, nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE sk_memories ADD COLUMN tsv tsvector "
            "GENERATED ALWAYS AS (to_tsvector('english', text)) STORED"
        )
        op.execute("CREATE INDEX ix_sk_memories_tsv ON sk_memories USING GIN (tsv)")
    else:
        # External-content FTS5 index over sk_memories.text, kept in step by triggers.
        op.execute(
            "CREATE VIRTUAL TABLE sk_memories_fts USING fts5("
            "text, content='sk_memories', content_rowid='pk', tokenize='porter unicode61')"
        )
        op.execute(
            "CREATE TRIGGER sk_memories_ai AFTER INSERT ON sk_memories BEGIN "
            "INSERT INTO sk_memories_fts(rowid, text) VALUES (new.pk, new.text); END"
        )
        op.execute(
            "CREATE TRIGGER sk_memories_ad AFTER DELETE ON sk_memories BEGIN "
            "INSERT INTO sk_memories_fts(sk_memories_fts, rowid, text) "
            "VALUES('delete', old.pk, old.text); END"
        )
        op.execute(
            "CREATE TRIGGER sk_memories_au AFTER UPDATE OF text ON sk_memories BEGIN "
            "INSERT INTO sk_memories_fts(sk_memories_fts, rowid, text) VALUES('delete', old.pk, old.text); "
            "INSERT INTO sk_memories_fts(rowid, text) VALUES (new.pk, new.text); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        for trigger in ("sk_memories_ai", "sk_memories_ad", "sk_memories_au"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS sk_memories_fts")
    for table in ("sk_memory_outbox", "sk_memory_changes", "sk_memories"):
        op.drop_table(table)
