"""The stores' lexical ranking alone on the real data, SQLite (FTS5 bm25) and PostgreSQL (BM25 in SQL,
sessionkit_server.retrieval.bm25; and the ``ts_rank`` query it replaced) beside bm25s, in one run on
the same texts (issue 13 item 2: "as good as a real BM25").

No embedding runs: the texts are written through the stores as the services write them, and each
query goes to ``MemoryStore.lexical`` / ``KnowledgeStore.lexical``, the call the searches make.

- LoCoMo dev (the first five conversations): every turn one long-term memory of the conversation's
  user, ``"[<session date>] <speaker>: <text>"``, written session by session in order through
  ``MemoryStore.add`` (so each carries its lexical context, the turn before it in its session, as the
  service writes it); recall@5/@10 of the evidence turns, the data README's metric.
- SciFact train (809 queries): each abstract one source of one user scope, chunked by the service's
  chunker (sessionkit_server.knowledge.chunking.split, its defaults: what ``add_knowledge`` of the
  file does), written through ``KnowledgeStore.put``; a document ranks where its best chunk does,
  nDCG@10 over the top 30 chunks (scifact_eval.py's depth).

bm25s (eval_data.bm25_rankings: k1 1.5, b 0.75, its English stop words and Snowball stemmer) ranks
the same texts without the lexical context (as the issue's reference figures).

Run: ``.venv/bin/python bench/lexical_quality.py --database-url postgresql://postgres@127.0.0.1/db``
(a database of its own; it is migrated and the benchmark's app is replaced), ``nice -n 19`` on a
shared machine: a quality figure, not a timing. Skips (exit 0) when the data is absent.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "sdk"), str(ROOT)]

from eval_data import RecallTable, bm25_rankings, locomo, ndcg_at_10, require_data, scifact  # noqa: E402
from sqlalchemy import Connection, func, literal_column, select  # noqa: E402

from sessionkit_server.common.db import Database  # noqa: E402
from sessionkit_server.common.identity import Owner  # noqa: E402
from sessionkit_server.knowledge.chunking import ChunkerConfig, split  # noqa: E402
from sessionkit_server.knowledge.records import ChunkRecord, Scope, SourceRecord  # noqa: E402
from sessionkit_server.knowledge.store import KnowledgeStore  # noqa: E402
from sessionkit_server.knowledge.tables import TEXT, USER  # noqa: E402
from sessionkit_server.memory import tables as t  # noqa: E402
from sessionkit_server.memory.base import content_hash  # noqa: E402
from sessionkit_server.memory.records import MemoryRecord, visible  # noqa: E402
from sessionkit_server.memory.store import MemoryStore  # noqa: E402
from sessionkit_server.retrieval.words import lexical_terms  # noqa: E402

LOCOMO_DEPTH = 10
SCIFACT_DEPTH = 30


def now_us() -> int:
    return time.time_ns() // 1000


def ts_rank(conn: Connection, owner: Owner, query: str, k: int) -> list[tuple[str, float]]:
    """MemoryStore.lexical's PostgreSQL query before BM25 (ts_rank, normalisation 1)."""
    terms = lexical_terms(query)
    if not terms:
        return []
    m = t.memories.c
    tsv = literal_column("sk_memories.tsv")
    tsquery = func.to_tsquery("english", " | ".join(terms))
    rank = func.ts_rank(tsv, tsquery, 1).label("rank")
    stmt = (
        select(m.id, rank)
        .where(visible(owner, t.LONG, now_us()), tsv.op("@@")(tsquery))
        .order_by(rank.desc())
        .limit(k)
    )
    return [(row[0], float(row[1])) for row in conn.execute(stmt).all()]


async def locomo_figures(urls: dict[str, str], table: RecallTable, app: str) -> None:
    convs = locomo(require_data("locomo-dev.json") / "locomo-dev.json")[:5]
    for name, url in urls.items():
        db = Database(url)
        store = MemoryStore(db)
        await store.start()
        for conv in convs:
            held: dict[str, str] = {}
            for turn in conv.turns:  # in order: each turn's context is the one before it
                now = now_us()
                text = turn.memory_text()
                record = MemoryRecord(
                    id="m-" + uuid.uuid4().hex, app_name=app, user_id=conv.sample_id,
                    session_id=f"{conv.sample_id}-s{turn.session}", memory_type=t.LONG, text=text,
                    content_hash=content_hash(text), quality=0.5, metadata={}, create_us=now,
                    update_us=now, expire_us=None, revision=1,
                )  # fmt: skip
                outcome = await store.add(record, "bench", 0)
                held[outcome.memory.id] = turn.dia_id
            owner = Owner(app, conv.sample_id, f"{conv.sample_id}-q")
            for q in conv.questions:
                hits = await store.lexical(owner, t.LONG, q.text, LOCOMO_DEPTH, now_us())
                table.add(f"{name} lexical only", q, [{held[i]} for i, _ in hits if i in held])
                if db.is_postgres:
                    old = await db.read(lambda conn, q=q, o=owner: ts_rank(conn, o, q.text, LOCOMO_DEPTH))
                    table.add("PostgreSQL ts_rank (before)", q, [{held[i]} for i, _ in old if i in held])
        await db.close()
        print(f"  LoCoMo on {name} done", flush=True)
    for conv in convs:
        texts = [turn.memory_text() for turn in conv.turns]
        for q, ranking in zip(
            conv.questions, bm25_rankings(texts, [q.text for q in conv.questions]), strict=True
        ):
            table.add("BM25 bm25s stemmed (baseline)", q, [{conv.turns[i].dia_id} for i in ranking])


async def scifact_figures(urls: dict[str, str], app: str) -> dict[str, float]:
    data = scifact(require_data("scifact-train") / "scifact-train")
    ids = list(data.corpus)
    queries = list(data.queries.items())
    scope = Scope(USER, "bench", "")
    config = ChunkerConfig()
    pieces = {doc_id: [c.text for c in split(content, config)] for doc_id, content in data.corpus.items()}
    figures: dict[str, float] = {}
    for name, url in urls.items():
        db = Database(url)
        store = KnowledgeStore(db)
        await store.start()
        for doc_id in ids:
            now = now_us()
            texts = pieces[doc_id]
            record = SourceRecord(
                f"src_{uuid.uuid4().hex[:20]}", app, scope, f"{doc_id}.txt", TEXT, "bench", "s", "",
                "text/plain", doc_id, content_hash(data.corpus[doc_id]), len(data.corpus[doc_id]),
                len(texts), config.as_dict(), {}, 0, now, now,
            )  # fmt: skip
            chunks = [
                ChunkRecord(f"chk_{uuid.uuid4().hex[:20]}", "", 0, app, n, text, 0, 0, len(text), [])
                for n, text in enumerate(texts)
            ]
            await store.put(record, chunks)
        scores = []
        for qid, text in queries:
            hits = await store.lexical(app, [scope], text, SCIFACT_DEPTH)
            found = await store.current_chunks(app, [scope], [c for c, _ in hits])
            ranked: list[str] = []
            for chunk_id, _ in hits:
                doc = found[chunk_id][1].name.removesuffix(".txt")
                if doc not in ranked:
                    ranked.append(doc)
            scores.append(ndcg_at_10(ranked, data.qrels[qid]))
        figures[f"{name} lexical only"] = sum(scores) / len(scores)
        await db.close()
        print(f"  SciFact on {name} done", flush=True)
    rankings = bm25_rankings([data.corpus[i] for i in ids], [text for _, text in queries])
    figures["BM25 bm25s stemmed (baseline)"] = sum(
        ndcg_at_10([ids[i] for i in ranking], data.qrels[qid])
        for (qid, _), ranking in zip(queries, rankings, strict=True)
    ) / len(queries)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="PostgreSQL (a database of its own); SQLite always runs")
    parser.add_argument("--skip-scifact", action="store_true")
    parser.add_argument("--skip-locomo", action="store_true")
    args = parser.parse_args()
    require_data("locomo-dev.json")
    app = f"lexq-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="sk-lexq-") as tmp:
        urls = {"SQLite FTS5 bm25": f"sqlite:///{Path(tmp) / 'sessionkit.db'}"}
        if args.database_url:
            urls["PostgreSQL BM25"] = args.database_url
        if not args.skip_locomo:
            table = RecallTable()
            asyncio.run(locomo_figures(urls, table, app))
            print(table.markdown(), flush=True)
        if not args.skip_scifact:
            figures = asyncio.run(scifact_figures(urls, app))
            print("| method | SciFact train nDCG@10 |\n|---|---|")
            for name, value in figures.items():
                print(f"| {name} | {value:.3f} |")


if __name__ == "__main__":
    main()
