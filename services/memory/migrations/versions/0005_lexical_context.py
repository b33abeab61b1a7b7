"""Each memory's lexical context: the text of the memory written just before it in the same session
(``context``), indexed next to its own text, so a turn that answers a question asked in the turn
before it ("Where did you go?" / "To Lisbon.") is found by the question's words too. Measured on
LoCoMo dev (docs/MEMORY.md, "Retrieval quality on LoCoMo"): the largest single gain in recall.

SQLite: the FTS5 table gets a second column (rebuilt from the rows); PostgreSQL: the generated tsvector
weights the text 'A' and the context 'B' (ts_rank's default weights: 1.0 and 0.4).

Revision ID: m0005
Revises: m0004
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "m0005"
down_revision = "m0004"
branch_labels = None
depends_on = None

_SQLITE_TRIGGERS = ("sk_memories_ai", "sk_memories_ad", "sk_memories_au")


def _sqlite_fts(columns: str, new: str, old: str) -> None:
    for trigger in _SQLITE_TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.execute("DROP TABLE IF EXISTS sk_memories_fts")
    op.execute(
        f"CREATE VIRTUAL TABLE sk_memories_fts USING fts5({columns}, content='sk_memories', "
        "content_rowid='pk', tokenize='porter unicode61')"
    )
    op.execute(
        "CREATE TRIGGER sk_memories_ai AFTER INSERT ON sk_memories BEGIN "
        f"INSERT INTO sk_memories_fts(rowid, {columns}) VALUES ({new}); END"
    )
    op.execute(
        "CREATE TRIGGER sk_memories_ad AFTER DELETE ON sk_memories BEGIN "
        f"INSERT INTO sk_memories_fts(sk_memories_fts, rowid, {columns}) VALUES('delete', {old}); END"
    )
    op.execute(
        f"CREATE TRIGGER sk_memories_au AFTER UPDATE OF {columns} ON sk_memories BEGIN "
        f"INSERT INTO sk_memories_fts(sk_memories_fts, rowid, {columns}) VALUES('delete', {old}); "
        f"INSERT INTO sk_memories_fts(rowid, {columns}) VALUES ({new}); END"
    )
    op.execute("INSERT INTO sk_memories_fts(sk_memories_fts) VALUES('rebuild')")


def _pg_tsv(expression: str) -> None:
    op.execute("DROP INDEX IF EXISTS ix_sk_memories_tsv")
    op.execute("ALTER TABLE sk_memories DROP COLUMN IF EXISTS tsv")
    op.execute(f"ALTER TABLE sk_memories ADD COLUMN tsv tsvector GENERATED ALWAYS AS ({expression}) STORED")
    op.execute("CREATE INDEX ix_sk_memories_tsv ON sk_memories USING GIN (tsv)")


def upgrade() -> None:
    op.add_column("sk_memories", sa.Column("context", sa.Text, nullable=True))
    op.create_index(
        "ix_sk_memories_session", "sk_memories", ["app_name", "user_id", "session_id", "memory_type", "pk"]
    )
    if op.get_bind().dialect.name == "postgresql":
        _pg_tsv(
            "setweight(to_tsvector('english', text), 'A') || "
            "setweight(to_tsvector('english', coalesce(context, '')), 'B')"
        )
    else:
        _sqlite_fts("text, context", "new.pk, new.text, new.context", "old.pk, old.text, old.context")


def downgrade() -> None:
    op.drop_index("ix_sk_memories_session", "sk_memories")
    if op.get_bind().dialect.name == "postgresql":
        _pg_tsv("to_tsvector('english', text)")
        op.drop_column("sk_memories", "context")
        return
    # The triggers name the column: they go first, then the column (SQLite >= 3.35 drops it in
    # place, keeping the table and its rowids), then the one-column index is rebuilt.
    for trigger in _SQLITE_TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.execute("DROP TABLE IF EXISTS sk_memories_fts")
    op.execute("ALTER TABLE sk_memories DROP COLUMN context")
    _sqlite_fts("text", "new.pk, new.text", "old.pk, old.text")
