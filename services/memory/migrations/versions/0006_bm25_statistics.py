"""BM25 on PostgreSQL: each row's lexical length and each user's document statistics.

``ts_rank`` is not BM25: it has no inverse document frequency (a word in every memory counts as much
as a name in one) and only a crude length normalisation. BM25 needs, besides the term frequencies the
tsvector already holds, each document's length and the number and average length of the documents
searched. Here:

- ``tsv_len``: the number of indexed words of the row (text and context, stop words excluded: the
  positions of its tsvector), a generated column, so the database keeps it as it keeps ``tsv``;
- ``sk_memory_lexical_stats``: per (app_name, user_id) the number of rows and the sum of their
  ``tsv_len``, kept by a trigger in the transaction of every write (so a search never sees another
  user's statistics, and a write's statistics commit or roll back with it). One row per user: a
  memory transaction writes one user's memories, so it locks at most one statistics row (no deadlock
  between writers) and concurrent writers of the same user queue on it until commit. The statistics
  cover the user's rows of every session and type (a search sees its session's short-term rows and the
  long-term ones): only the user's own data shapes its ranking.

Document frequencies are not stored: the search counts them among its candidates (every row holding a
query word is a candidate, so the count over the candidates is the exact count over the user's rows).

SQLite: nothing (FTS5's bm25 keeps its own statistics).

Revision ID: m0006
Revises: m0005
Create Date: 2026-12-08
"""

from alembic import op

revision = "m0006"
down_revision = "m0005"
branch_labels = None
depends_on = None

#: The tsvector's expression (migration m0005), repeated: a generated column cannot read another.
TSV = (
    "setweight(to_tsvector('english', text), 'A') || "
    "setweight(to_tsvector('english', coalesce(context, '')), 'B')"
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # The number of word positions of a tsvector (a lexeme without positions counts once).
    op.execute(
        "CREATE OR REPLACE FUNCTION sk_tsv_length(tsvector) RETURNS integer LANGUAGE sql IMMUTABLE "
        "PARALLEL SAFE STRICT AS "
        "$$ SELECT coalesce(sum(coalesce(array_length(positions, 1), 1)), 0)::integer FROM unnest($1) $$"
    )
    op.execute(
        f"ALTER TABLE sk_memories ADD COLUMN tsv_len integer GENERATED ALWAYS AS (sk_tsv_length({TSV})) STORED"
    )
    op.execute(
        "CREATE TABLE sk_memory_lexical_stats (app_name varchar(128) NOT NULL, user_id varchar(128) NOT NULL, "
        "docs bigint NOT NULL, tokens bigint NOT NULL, PRIMARY KEY (app_name, user_id))"
    )
    op.execute(
        "INSERT INTO sk_memory_lexical_stats SELECT app_name, user_id, count(*), coalesce(sum(tsv_len), 0) "
        "FROM sk_memories GROUP BY app_name, user_id"
    )
    op.execute(
        """
        CREATE FUNCTION sk_memory_lexical_count() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF TG_OP <> 'INSERT' THEN
            UPDATE sk_memory_lexical_stats SET docs = docs - 1, tokens = tokens - OLD.tsv_len
              WHERE app_name = OLD.app_name AND user_id = OLD.user_id;
          END IF;
          IF TG_OP <> 'DELETE' THEN
            INSERT INTO sk_memory_lexical_stats AS s VALUES (NEW.app_name, NEW.user_id, 1, NEW.tsv_len)
              ON CONFLICT (app_name, user_id)
              DO UPDATE SET docs = s.docs + 1, tokens = s.tokens + EXCLUDED.tokens;
          END IF;
          RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER sk_memories_lexical_count AFTER INSERT OR DELETE OR UPDATE OF text, context "
        "ON sk_memories FOR EACH ROW EXECUTE FUNCTION sk_memory_lexical_count()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS sk_memories_lexical_count ON sk_memories")
    op.execute("DROP FUNCTION IF EXISTS sk_memory_lexical_count()")
    op.execute("DROP TABLE IF EXISTS sk_memory_lexical_stats")
    op.execute("ALTER TABLE sk_memories DROP COLUMN IF EXISTS tsv_len")
    # sk_tsv_length stays: the knowledge service's tables may use it (k0005).
