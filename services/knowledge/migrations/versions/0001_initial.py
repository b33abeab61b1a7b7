"""Knowledge sources, chunks, the vector outbox, and the lexical index.

Revision ID: k0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "k0001"
down_revision = None
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer, "sqlite")
ID = sa.String(128)


def upgrade() -> None:
    op.create_table(
        "sk_knowledge_sources",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(40), nullable=False, unique=True),
        sa.Column("app_name", ID, nullable=False),
        sa.Column("scope_kind", sa.SmallInteger, nullable=False),
        sa.Column("owner", ID, nullable=False),
        sa.Column("scope_key", ID, nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("session_id", ID, nullable=False),
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("content_type", sa.String(128), nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("chunk_count", sa.Integer, nullable=False),
        sa.Column("chunker", sa.Text, nullable=False),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("create_us", sa.BigInteger, nullable=False),
        sa.Column("update_us", sa.BigInteger, nullable=False),
        sa.UniqueConstraint(
            "app_name", "scope_kind", "owner", "scope_key", "name", name="uq_sk_knowledge_name"
        ),
    )
    op.create_table(
        "sk_knowledge_chunks",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(48), nullable=False, unique=True),
        sa.Column("source_id", sa.String(40), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("app_name", ID, nullable=False),
        sa.Column("chunk_index", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("page", sa.Integer, nullable=False),
        sa.Column("start_char", sa.BigInteger, nullable=False),
        sa.Column("end_char", sa.BigInteger, nullable=False),
        sa.Column("heading_path", sa.Text, nullable=False),
    )
    op.create_index(
        "ix_sk_knowledge_chunks_source", "sk_knowledge_chunks", ["source_id", "version", "chunk_index"]
    )
    op.create_table(
        "sk_knowledge_outbox",
        sa.Column("id", PK, primary_key=True, autoincrement=True),
        sa.Column("chunk_id", sa.String(48), nullable=False),
        sa.Column("app_name", ID, nullable=False),
        sa.Column("action", sa.String(8), nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE sk_knowledge_chunks ADD COLUMN tsv tsvector "
            "GENERATED ALWAYS AS (to_tsvector('english', text)) STORED"
        )
        op.execute("CREATE INDEX ix_sk_knowledge_chunks_tsv ON sk_knowledge_chunks USING GIN (tsv)")
    else:
        op.execute(
            "CREATE VIRTUAL TABLE sk_knowledge_chunks_fts USING fts5("
            "text, content='sk_knowledge_chunks', content_rowid='pk', tokenize='porter unicode61')"
        )
        op.execute(
            "CREATE TRIGGER sk_knowledge_chunks_ai AFTER INSERT ON sk_knowledge_chunks BEGIN "
            "INSERT INTO sk_knowledge_chunks_fts(rowid, text) VALUES (new.pk, new.text); END"
        )
        op.execute(
            "CREATE TRIGGER sk_knowledge_chunks_ad AFTER DELETE ON sk_knowledge_chunks BEGIN "
            "INSERT INTO sk_knowledge_chunks_fts(sk_knowledge_chunks_fts, rowid, text) "
            "VALUES('delete', old.pk, old.text); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        for trigger in ("sk_knowledge_chunks_ai", "sk_knowledge_chunks_ad"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS sk_knowledge_chunks_fts")
    for table in ("sk_knowledge_outbox", "sk_knowledge_chunks", "sk_knowledge_sources"):
        op.drop_table(table)
