"""What ``search_memory(..., explain=True)`` costs: search latency with and without it, interleaved (so
machine noise hits both alike), through the SDK over gRPC against a ``sessionkit serve`` in its own
process, among ``--memories`` long-term memories of one user (default 1000: a quick run, about a
minute). docs/MEMORY.md "Explaining a search" has the figures.

    .venv/bin/python bench/explain_cost.py [--memories 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from memory_common import MemoryServer, machine, percentile

from sessionkit import AsyncSession

WORDS = ["tea", "coffee", "train", "Lisbon", "dog", "allergy", "budget", "guitar", "dentist", "meeting",
         "seat", "window", "Porto", "cat", "shellfish", "renovation", "piano", "Friday", "birthday",
         "sister", "marathon", "novel", "garden", "bike"]  # fmt: skip


def _text(i: int) -> str:
    return f"Note {i}: {WORDS[i % len(WORDS)]} and {WORDS[(i * 7) % len(WORDS)]} on day {i}"


async def run(memories: int, rounds: int) -> dict[bool, list[float]]:
    server = MemoryServer(Path(tempfile.mkdtemp(prefix="explain-bench-"))).start()
    try:
        async with AsyncSession(session_id="s", user_id="u", address=server.address, timeout=300) as session:
            for start in range(0, memories, 256):
                await session.add_memories([_text(i) for i in range(start, min(memories, start + 256))])
            queries = [
                f"what about {WORDS[i % len(WORDS)]} {WORDS[(i * 3) % len(WORDS)]}?" for i in range(40)
            ]
            for query in queries[:10]:  # warm-up: the model, the caches, both paths
                await session.search_memory(query, explain=True)
                await session.search_memory(query)
            times: dict[bool, list[float]] = {False: [], True: []}
            for round_ in range(rounds):
                for query in queries:
                    for explain in (False, True) if round_ % 2 else (True, False):
                        started = time.perf_counter()
                        await session.search_memory(query, explain=explain)
                        times[explain].append((time.perf_counter() - started) * 1000)
            return times
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memories", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    times = asyncio.run(run(args.memories, args.rounds))
    print(machine())
    print(f"search among {args.memories} memories, limit 5, {len(times[False])} calls each, interleaved:")
    for explain, ms in times.items():
        print(
            f"  explain={explain!s:<5}  p50 {statistics.median(ms):6.2f} ms"
            f"  p90 {percentile(ms, 0.9):6.2f} ms  p99 {percentile(ms, 0.99):6.2f} ms"
        )


if __name__ == "__main__":
    main()
