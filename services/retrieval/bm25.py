"""BM25 on PostgreSQL, in SQL, over the tsvector columns the stores already keep.

PostgreSQL's own ranking (``ts_rank``) is not BM25: no inverse document frequency and a crude length
normalisation; on LoCoMo dev it found less than bm25s and SQLite's FTS5 (lexical-only recall@5 0.524
against 0.525 and 0.569, docs/MEMORY.md). This is the BM25 FTS5 computes (``bm25()``: k1 1.2, b 0.75,
Lucene's always-positive IDF), so both backends rank alike:

    score(d) = sum over query lexemes t in d of
        idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * len(d) / avglen))
    idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

- candidates: the rows of the searched scope matching any query lexeme (``tsv @@ a | b | c``, the GIN
  index), all of them: every row holding a lexeme is a candidate, so counting the candidates that hold
  ``t`` gives df(t) over the scope exactly, with no statistics table per word;
- tf(t, d): the positions of ``t`` in the row's tsvector (``unnest(tsv)``), each weighted by its field
  (the memory's own text 'A' weighs 1, its lexical context 'B' weighs ``context_weight``, as FTS5's
  column weights);
- len(d): the row's number of indexed words (``tsv_len``, a generated column: stop words excluded, as
  bm25s and FTS5's query side drop them);
- N and avglen: the number of rows and of words of the searched scope, kept by the store in the
  transaction of each write (memory: a per-user statistics row; knowledge: per source).

The caller's SQL provides two CTEs: ``cand(id, tsv, tsv_len)`` (the candidates: ``tsv @@``
:data:`TSQUERY` and the scope's filter) and ``stats(n, avglen)`` (one row), then :data:`SCORE_SQL`."""

from __future__ import annotations

#: BM25's term-frequency saturation and length normalisation: FTS5's (and Lucene's) defaults.
K1 = 1.2
B = 0.75

#: The query's tsquery (any of its lexemes) for the candidates' ``tsv @@`` (written inline, not read
#: from a CTE: the planner folds the immutable call into a constant and can use the GIN index), from
#: the words of sessionkit_server.retrieval.words.lexical_terms (bound as ``:tsquery``), stemmed by the
#: same 'english' configuration as the documents.
TSQUERY = "to_tsquery('english', :tsquery)"

#: The scoring, after the caller's ``cand`` and ``stats`` CTEs (see the module's docstring): the best
#: ``:limit`` rows as (id, score), ties broken by id so a ranking is repeatable. Each candidate's
#: tsvector is cut to the query's lexemes before ``unnest`` (the inner ``ts_delete`` removes them, the
#: outer removes every other lexeme: C functions, where unnesting every lexeme and filtering took about
#: twice as long at 10k memories). A lexeme's weighted tf is its number of positions plus (context
#: weight - 1) per position weighted 'B' (array functions, not a subquery per lexeme).
SCORE_SQL = """
, tf AS (
    SELECT c.id, c.tsv_len, u.lexeme,
           cardinality(u.weights)
           + (CAST(:context_weight AS float8) - 1.0) * cardinality(array_positions(u.weights, 'B')) AS tf
    FROM cand AS c CROSS JOIN LATERAL unnest(ts_delete(c.tsv, tsvector_to_array(
        ts_delete(c.tsv, tsvector_to_array(to_tsvector('english', :words)))))) AS u
),
df AS (SELECT lexeme, count(*)::float8 AS df FROM tf GROUP BY lexeme)
SELECT tf.id,
       sum(ln(1.0 + (greatest(s.n, df.df) - df.df + 0.5) / (df.df + 0.5))
           * tf.tf * (CAST(:k1 AS float8) + 1.0)
           / (tf.tf + CAST(:k1 AS float8) * (1.0 - CAST(:b AS float8)
                                              + CAST(:b AS float8) * tf.tsv_len / s.avglen))) AS score
FROM tf JOIN df ON df.lexeme = tf.lexeme CROSS JOIN stats AS s
GROUP BY tf.id
ORDER BY score DESC, tf.id
LIMIT :limit
"""


def query_params(terms: list[str], context_weight: float = 1.0) -> dict[str, object]:
    """The bind parameters of :data:`TSQUERY` and :data:`SCORE_SQL` for the query words ``terms``
    (plain words, no tsquery operator: sessionkit_server.retrieval.words.lexical_terms)."""
    return {
        "tsquery": " | ".join(terms),
        "words": " ".join(terms),
        "context_weight": context_weight,
        "k1": K1,
        "b": B,
    }
