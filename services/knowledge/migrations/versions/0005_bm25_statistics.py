"""BM25 on PostgreSQL (sessionkit_server.retrieval.bm25): each chunk's lexical length and each
source's lexical statistics.

- ``sk_knowledge_chunks.tsv_len``: the chunk's number of indexed words (the positions of its
  tsvector: stop words excluded), a generated column, kept by the database as ``tsv`` is;
- ``sk_knowledge_sources.lexical_chunks`` / ``lexical_tokens``: the number of chunks of the source's
  current version and the sum of their ``tsv_len``, written by KnowledgeStore.put in the transaction
  that writes the chunks. A search sums them over the sources of the scopes it searches: BM25's N and
  average length are those of the searched scopes, never of another user's or collection's sources,
  and no row is shared between writers (a source's row is already locked by its own write).

Document frequencies are counted among a search's candidates (every chunk holding a query word is one).

SQLite: nothing (FTS5's bm25 keeps its own statistics).

Revision ID: k0005
Revises: k0004
Create Date: 2026-12-08
"""

from alembic import op

revision = "k0005"
down_revision = "k0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # The same function as the memory service's m0006 (whichever migrates first creates it).
    op.execute(
        "CREATE OR REPLACE FUNCTION sk_tsv_length(tsvector) RETURNS integer LANGUAGE sql IMMUTABLE "
        "PARALLEL SAFE STRICT AS "
        "$$ SELECT coalesce(sum(coalesce(array_length(positions, 1), 1)), 0)::integer FROM unnest($1) $$"
    )
    op.execute(
        "ALTER TABLE sk_knowledge_chunks ADD COLUMN tsv_len integer "
        "GENERATED ALWAYS AS (sk_tsv_length(to_tsvector('english', text))) STORED"
    )
    op.execute("ALTER TABLE sk_knowledge_sources ADD COLUMN lexical_chunks bigint NOT NULL DEFAULT 0")
    op.execute("ALTER TABLE sk_knowledge_sources ADD COLUMN lexical_tokens bigint NOT NULL DEFAULT 0")
    op.execute(
        "UPDATE sk_knowledge_sources AS s SET lexical_chunks = c.n, lexical_tokens = c.tokens FROM "
        "(SELECT source_id, version, count(*) AS n, coalesce(sum(tsv_len), 0) AS tokens "
        "FROM sk_knowledge_chunks GROUP BY source_id, version) AS c "
        "WHERE c.source_id = s.id AND c.version = s.version"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE sk_knowledge_sources DROP COLUMN IF EXISTS lexical_tokens")
    op.execute("ALTER TABLE sk_knowledge_sources DROP COLUMN IF EXISTS lexical_chunks")
    op.execute("ALTER TABLE sk_knowledge_chunks DROP COLUMN IF EXISTS tsv_len")
