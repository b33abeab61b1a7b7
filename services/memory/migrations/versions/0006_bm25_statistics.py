"""BM25 on PostgreSQL: each row's lexical length and each user's document statistics.

``ts_rank`` is not BM25: it has no inverse document frequency (a word in every memory counts as much
as a name in one) and only a crude length normalisation. BM25 needs, besides the term frequencies the
tsvector already holds, each document's length and the number and average length of the documents
searched. Here:

- ``tsv_len``: the number of indexed words of the row (text and context, stop words excluded: the
  positions of its tsvector), a generated column, so the database keeps it as it keeps ``tsv``;
- ``sk_memory_lexical_stats``: per (app_name, user_id) the number of rows and the sum of their
  ``tsv_len``, kept by statement-level triggers in the transaction of every write (so a search never
  sees another user's statistics, and a write's statistics commit or roll back with it). One row per
  user: a memory transaction writes one user's memories, so it locks at most one statistics row (no
  deadlock between writers; a statement touching several users locks theirs in one order) and
  concurrent writers of the same user queue on it until commit. The statistics
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
        "ALTER TABLE sk_memories ADD COLUMN tsv_len integer "
        f"GENERATED ALWAYS AS (sk_tsv_length({TSV})) STORED"
    )
    op.execute(
        "CREATE TABLE sk_memory_lexical_stats (app_name varchar(128) NOT NULL, "
        "user_id varchar(128) NOT NULL, docs bigint NOT NULL, tokens bigint NOT NULL, "
        "PRIMARY KEY (app_name, user_id))"
    )
    op.execute(
        "INSERT INTO sk_memory_lexical_stats SELECT app_name, user_id, count(*), coalesce(sum(tsv_len), 0) "
        "FROM sk_memories GROUP BY app_name, user_id"
    )
    # Statement-level triggers over the transition tables: one UPDATE of each user's row per
    # statement, however many rows it wrote. A row-level trigger updated the same statistics row once
    # per memory, and PostgreSQL follows a row's versions written in one transaction one by one: a
    # 20,000-row insert took 9.4 s against 45 ms (docs/BENCHMARKS.md).
    for event, delta in (
        ("INSERT", "SELECT app_name, user_id, count(*) AS docs, sum(tsv_len) AS tokens FROM new_rows "
         "GROUP BY app_name, user_id"),
        ("DELETE", "SELECT app_name, user_id, -count(*) AS docs, -sum(tsv_len) AS tokens FROM old_rows "
         "GROUP BY app_name, user_id"),
        ("UPDATE", "SELECT app_name, user_id, 0 AS docs, sum(tokens) AS tokens FROM ("
         "SELECT app_name, user_id, tsv_len AS tokens FROM new_rows UNION ALL "
         "SELECT app_name, user_id, -tsv_len FROM old_rows) AS d GROUP BY app_name, user_id "
         "HAVING sum(tokens) <> 0"),
    ):  # fmt: skip
        name = f"sk_memory_lexical_{event.lower()}"
        op.execute(
            f"""
            CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              INSERT INTO sk_memory_lexical_stats AS s (app_name, user_id, docs, tokens)
                SELECT app_name, user_id, docs, tokens FROM ({delta}) AS d ORDER BY app_name, user_id
                ON CONFLICT (app_name, user_id)
                DO UPDATE SET docs = s.docs + EXCLUDED.docs, tokens = s.tokens + EXCLUDED.tokens;
              RETURN NULL;
            END $$
            """
        )
        tables = {
            "INSERT": "NEW TABLE AS new_rows",
            "DELETE": "OLD TABLE AS old_rows",
            "UPDATE": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
        }[event]
        op.execute(
            f"CREATE TRIGGER {name} AFTER {event} ON sk_memories REFERENCING {tables} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {name}()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for event in ("insert", "delete", "update"):
        op.execute(f"DROP TRIGGER IF EXISTS sk_memory_lexical_{event} ON sk_memories")
        op.execute(f"DROP FUNCTION IF EXISTS sk_memory_lexical_{event}()")
    op.execute("DROP TABLE IF EXISTS sk_memory_lexical_stats")
    op.execute("ALTER TABLE sk_memories DROP COLUMN IF EXISTS tsv_len")
    # sk_tsv_length stays: the knowledge service's tables may use it (k0005).
