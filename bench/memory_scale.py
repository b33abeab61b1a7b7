"""The memory benchmark's growing of the searched user's memories (through the API, or seeded by a
faster direct path) and its search latency at each size."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from memory_common import percentile
from memory_ingestion import add_batches

from sessionkit import AsyncSession
from sessionkit_server.common.db import Database
from sessionkit_server.memory import tables as t
from sessionkit_server.memory.service import content_hash
from sessionkit_server.memory.store import MemoryRecord, MemoryStore
from sessionkit_server.retrieval.embeddings import LocalEmbedder

SEARCH_APP = "bench"
SEARCH_USER = "search-user"


@dataclass
class Grown:
    """How the searched user's memories reached a size."""

    size: int
    how: str
    seconds: float
    adds: int = 0
    merged: int = 0
    deduplicated: int = 0
    #: (memories stored, adds per second of the last 1000 adds) while growing through the API
    rates: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Latency:
    size: int
    label: str = ""
    search: list[float] = field(default_factory=list)
    embed: list[float] = field(default_factory=list)
    rpc: list[float] = field(default_factory=list)


# -- growing the searched memory ---------------------------------------------------------------------------


async def grow_api(address: str, texts: Iterator[str], have: int, size: int, per_call: int) -> Grown:
    """Add distinct texts through AddMemories, ``per_call`` per call, until ``size`` memories are stored
    (merged and deduplicated adds do not count)."""
    grown = Grown(size, f"API, AddMemories with {per_call} per call", 0.0)
    start = time.perf_counter()
    while have < size:
        batch = list(itertools.islice(texts, min(1000, size - have)))
        rate, counts = await add_batches(address, SEARCH_APP, SEARCH_USER, batch, per_call, "grow")
        grown.adds += len(batch)
        grown.merged += counts["merged"]
        grown.deduplicated += counts["deduplicated"]
        have += counts["new"]
        grown.rates.append((have, rate))
        print(f"  {have} memories, {rate:.1f} adds/s", flush=True)
    grown.seconds = time.perf_counter() - start
    return grown


async def seed_rows(data_dir: Path, texts: Iterator[str], count: int) -> float:
    """``count`` rows through MemoryStore.add (row, history, outbox entry, FTS5) with the server stopped."""
    db = Database(f"sqlite:///{data_dir / 'sessionkit.db'}")
    store = MemoryStore(db)
    start = time.perf_counter()
    try:
        done = 0
        while done < count:
            chunk = list(itertools.islice(texts, min(256, count - done)))
            now = time.time_ns() // 1000
            records = [
                MemoryRecord(
                    id="m-" + uuid.uuid4().hex,
                    app_name=SEARCH_APP,
                    user_id=SEARCH_USER,
                    session_id="seed",
                    memory_type=t.LONG,
                    text=text,
                    content_hash=content_hash(text),
                    quality=0.7,
                    metadata={},
                    create_us=now,
                    update_us=now,
                    expire_us=None,
                    revision=1,
                )
                for text in chunk
            ]
            outcomes = await asyncio.gather(*(store.add(r, "bench-seed", 100) for r in records))
            done += sum(1 for o in outcomes if not o.deduplicated)
            if done % 10240 < 256:
                print(
                    f"  seeded {done}/{count} rows, {done / (time.perf_counter() - start):.0f}/s", flush=True
                )
    finally:
        await db.close()
    return time.perf_counter() - start


# -- search latency -------------------------------------------------------------------------------------


async def search_latency(
    address: str, embedder: LocalEmbedder, size: int, queries: list[str], rounds: int
) -> Latency:
    session = AsyncSession("search-session", user_id=SEARCH_USER, address=address, app_name=SEARCH_APP)
    await session.set_state("k", 1)
    for q in queries[:20]:  # warm up: connections, the server's first queries
        # Not the measured text itself: the server's embedder keeps recently embedded texts.
        await session.search_memory(f"{q} (warm-up)")
    out = Latency(size)
    per_round = max(1, len(queries) // rounds)
    for r in range(rounds):
        for q in queries[r * per_round : (r + 1) * per_round]:
            start = time.perf_counter()
            await embedder.embed_one(q)
            out.embed.append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            hits = await session.search_memory(q)
            out.search.append((time.perf_counter() - start) * 1e3)
            assert len(hits) == 5, hits
            start = time.perf_counter()
            await session.get_state("k")
            out.rpc.append((time.perf_counter() - start) * 1e3)
    await session.close()
    return out


def print_latency(results: list[Latency], grown: list[Grown]) -> None:
    print("\nSearch latency, search_memory(query) (limit 5) in one user's long-term memory, ms")
    print(
        f"{'memories':>9} {'search p50':>11} {'p99':>7} {'embed p50':>10} {'p99':>6} "
        f"{'rest p50':>9} {'get_state p50':>14} {'search/embed':>13}"
    )
    for lat in results:
        s50, e50 = statistics.median(lat.search), statistics.median(lat.embed)
        if lat.label:
            print(f"  {lat.label}:")
        print(
            f"{lat.size:9d} {s50:11.1f} {percentile(lat.search, 0.99):7.1f} {e50:10.1f} "
            f"{percentile(lat.embed, 0.99):6.1f} {s50 - e50:9.1f} {statistics.median(lat.rpc):14.2f} "
            f"{s50 / e50:12.2f}x"
        )
    print("(embed = the query's embedding by the model alone in this process; rest = search p50 - embed p50)")
    print("\nHow the searched memories were stored:")
    for g in grown:
        extra = (
            f": {g.adds} adds ({g.merged} merged into a near-duplicate, {g.deduplicated} exact duplicates), "
            f"{g.adds / g.seconds:.1f} adds/s"
            if g.adds
            else ""
        )
        print(f"  up to {g.size}: {g.how}, {g.seconds:.0f} s{extra}")
        if len(g.rates) > 1:
            trend = ", ".join(f"{rate:.0f} at {have}" for have, rate in g.rates)
            print(f"    adds/s of each 1000 adds, by memories stored: {trend}")
