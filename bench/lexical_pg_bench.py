"""PostgreSQL lexical search: BM25 in SQL (sessionkit_server.retrieval.bm25, what MemoryStore.lexical
runs now) against the ``ts_rank`` query it replaced, on the same rows, interleaved, at each size.

One user's long-term memory grows to each size (default 10k and 100k, the memory benchmark's worst
case: every memory in the searched user's partition) with distinct texts of bench/memory_dataset.py.
Rows are written in bulk with their lexical context (the previous text, as MemoryStore.add writes it);
the database computes the tsvector, its length and the user's statistics (triggers of migration
m0006), so the rows are what the store holds; history and outbox rows, which no search reads, are not
written. The queries are bench/memory_dataset.py's questions. Each query runs once per method per
round, the methods alternating, so machine noise hits both alike; p50 and p95 per method and size, and
the ratio BM25 / ts_rank.

Run (a database of its own: it is migrated, and the searched user's rows are replaced):
``.venv/bin/python bench/lexical_pg_bench.py --database-url postgresql://postgres@127.0.0.1/db
[--sizes 10000,100000] [--queries 200]`` under ``flock /tmp/bench.lock`` on a shared machine. To keep
the locked run short, seed first without the lock (``--queries 0``), then time with ``--reuse``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "sdk"), str(ROOT)]

from memory_dataset import scale_queries, scale_texts  # noqa: E402
from sqlalchemy import Connection, delete, func, insert, literal_column, select  # noqa: E402

from sessionkit_server.common.db import Database  # noqa: E402
from sessionkit_server.common.identity import Owner  # noqa: E402
from sessionkit_server.memory import tables as t  # noqa: E402
from sessionkit_server.memory.base import content_hash  # noqa: E402
from sessionkit_server.memory.records import visible  # noqa: E402
from sessionkit_server.memory.store import MemoryStore  # noqa: E402
from sessionkit_server.retrieval.words import lexical_terms  # noqa: E402

APP, USER = "lexbench", "search-user"
OWNER = Owner(APP, USER, "search-session")


def ts_rank_query(conn: Connection, terms: list[str], k: int, now_us: int) -> list[tuple[str, float]]:
    """The query MemoryStore.lexical ran on PostgreSQL before BM25 (ts_rank, normalisation 1)."""
    m = t.memories.c
    tsv = literal_column("sk_memories.tsv")
    tsquery = func.to_tsquery("english", " | ".join(terms))
    rank = func.ts_rank(tsv, tsquery, 1).label("rank")
    stmt = (
        select(m.id, rank)
        .where(visible(OWNER, t.LONG, now_us), tsv.op("@@")(tsquery))
        .order_by(rank.desc())
        .limit(k)
    )
    return [(row[0], float(row[1])) for row in conn.execute(stmt).all()]


async def grow(db: Database, texts: itertools.islice[str] | object, have: int, want: int) -> None:
    source = iter(texts)  # type: ignore[call-overload]
    previous: str | None = None
    while have < want:
        batch = list(itertools.islice(source, min(5000, want - have)))
        now = time.time_ns() // 1000
        rows = []
        for text in batch:
            rows.append(
                {
                    "id": "m-" + uuid.uuid4().hex, "app_name": APP, "user_id": USER,
                    "session_id": "seed", "memory_type": t.LONG, "scope": "", "text": text,
                    "content_hash": content_hash(text), "quality": 0.5, "metadata": "{}",
                    "create_us": now, "update_us": now, "expire_us": None, "revision": 1,
                    "context": previous,
                }
            )  # fmt: skip
            previous = text

        def run(conn: Connection, rows: list[dict[str, object]] = rows) -> None:
            conn.execute(insert(t.memories), rows)

        await db.write(run)
        have += len(batch)
    print(f"  {have} memories", flush=True)


async def measure(db: Database, queries: list[str], k: int) -> dict[str, list[float]]:
    store = MemoryStore(db)
    times: dict[str, list[float]] = {"BM25 (now)": [], "ts_rank (before)": []}
    for query in queries:
        terms = lexical_terms(query)
        if not terms:
            continue
        now = time.time_ns() // 1000
        start = time.perf_counter()
        await store.lexical(OWNER, t.LONG, query, k, now)
        times["BM25 (now)"].append(1000 * (time.perf_counter() - start))
        start = time.perf_counter()
        await db.read(lambda conn, terms=terms, now=now: ts_rank_query(conn, terms, k, now))
        times["ts_rank (before)"].append(1000 * (time.perf_counter() - start))
    return times


async def main_async(
    url: str, sizes: list[int], queries: list[str], k: int, rounds: int, reuse: bool
) -> None:
    db = Database(url)
    await MemoryStore(db).start()
    have = 0
    if reuse:  # the rows of an earlier run (--seed-only), the same texts in the same order
        have = await db.read(
            lambda conn: conn.execute(
                select(func.count()).select_from(t.memories).where(t.memories.c.app_name == APP)
            ).scalar_one()
        )
    else:
        await db.write(lambda conn: conn.execute(delete(t.memories).where(t.memories.c.app_name == APP)))
    texts = itertools.islice(scale_texts(), have, None)
    try:
        for size in sizes:
            if size > have:
                await grow(db, texts, have, size)
                have = size
                await db.write(lambda conn: conn.exec_driver_sql("ANALYZE sk_memories"))
            if not queries:
                continue
            await measure(db, queries[:20], k)  # warm the caches and the connections
            times: dict[str, list[float]] = {}
            for _ in range(rounds):
                for name, values in (await measure(db, queries, k)).items():
                    times.setdefault(name, []).extend(values)
            p50 = {name: statistics.median(v) for name, v in times.items()}
            for name, values in times.items():
                ordered = sorted(values)
                print(
                    f"| {size:,} | {name} | {p50[name]:.2f} | {ordered[int(0.95 * len(ordered))]:.2f} | "
                    f"{len(values)} |",
                    flush=True,
                )
            print(
                f"  ratio BM25 / ts_rank p50 at {size:,}: {p50['BM25 (now)'] / p50['ts_rank (before)']:.2f}"
            )
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--reuse", action="store_true", help="keep the rows of an earlier run and grow from them"
    )
    parser.add_argument("--k", type=int, default=40, help="lexical depth (the service's for a search of 10)")
    args = parser.parse_args()
    if not args.database_url.startswith("postgresql"):
        sys.exit("--database-url must be a PostgreSQL URL (SQLite's ranking is FTS5's bm25, not changed)")
    sizes = [int(s) for s in args.sizes.split(",")]
    print("| memories | method | p50 ms | p95 ms | N |\n|---|---|---|---|---|")
    asyncio.run(
        main_async(args.database_url, sizes, scale_queries(args.queries), args.k, args.rounds, args.reuse)
    )


if __name__ == "__main__":
    main()
