"""Memory service throughput and search latency, against the embedding model's own speed measured in
the same run on the same machine.

A ``sessionkit serve --service state --service memory`` runs in its own process on a temp data
directory; this process is the client (the SDK's ``AsyncSession`` with ``address=``) and also runs the
model alone (``sessionkit_server.retrieval.embeddings.LocalEmbedder``: all-MiniLM-L6-v2 on the CPU, the class
and settings the server uses) for the baselines.

1. Ingestion, in interleaved rounds so machine noise hits every case alike: the model alone embedding
   one text per call (what one add needs) and in batches of 64 (its best throughput); then
   ``store_long_memory`` with 1, 4 and 16 concurrent clients (the server coalesces concurrent adds'
   embeddings into one model call), and the batch RPC ``AddMemories`` (``MemoryClient.add_many``, what
   ``add_memories([...])`` sends) with 64 and 256 memories per call from one client. Ratios are to the
   model alone.
2. Search latency at each size (default 1k, 10k, 100k memories, all in ONE user's long-term memory,
   the worst case for one user's partition): ``search_memory(query)`` as a user calls it, interleaved
   with the query's embedding in this process (``embed_one``: the part of a search that is the model)
   and a ``get_state`` call (a plain RPC round trip to the same server). "rest" = search p50 minus
   embedding p50: the index, lexical search, rows, fusion and the RPC.

Memories are grown through the API (AddMemories, 256 per call, distinct texts from
bench/memory_dataset.py) up to ``--api-seed-max`` (default 10000); larger sizes are seeded by a faster
documented path, the
service's own building blocks with the server stopped: rows written with ``MemoryStore.add`` (the same
transaction as an add: row, history, outbox entry, FTS5 trigger), then the restarted server applies
the outbox before it answers (``MemoryService.drain_outbox``: batched embedding, 256 vectors per
Chroma upsert). What was seeded how is printed.

``--quick`` (what ``make bench`` runs, a few minutes): sizes 1000,10000, fewer calls, 10k seeded by the
direct path. Full: ``.venv/bin/python bench/memory_bench.py`` (about 20 minutes on a quiet 2-core
machine, most of it growing 1k -> 10k through the API and indexing 90k vectors).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from memory_common import MemoryServer, machine
from memory_dataset import scale_queries, scale_texts
from memory_ingestion import ingestion, print_ingestion
from memory_profile import ADD_PARTS, SEARCH_PARTS, breakdown, print_breakdown, print_profile, py_spy
from memory_scale import SEARCH_USER, Grown, Latency, grow_api, print_latency, search_latency, seed_rows
from report import Recorder

from sessionkit import AsyncSession
from sessionkit_server.retrieval.embeddings import LocalEmbedder

# -- main ---------------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, data_dir: Path, extra_env: dict[str, str]) -> None:
    sizes = sorted(int(s) for s in args.sizes.split(","))
    texts = scale_texts()
    queries = scale_queries(args.searches + 20)
    queries = queries[20:] + queries[:20]  # the warm-up queries are measured last, not first
    embedder = LocalEmbedder()
    await embedder.warm_up()
    server = MemoryServer(data_dir, extra_env).start()
    try:
        # A loaded machine takes minutes to load the server's model: the warm-up call waits for it.
        warm = AsyncSession(
            "warm", user_id="warm", address=server.address, app_name="bench-warm", timeout=900
        )
        await warm.store_long_memory("warm-up memory")  # loads the server's model
        await warm.search_memory("warm-up")
        await warm.close()

        print("\nIngestion: interleaved rounds of the model alone and store_long_memory ...", flush=True)

        def profile_adds() -> subprocess.Popen[bytes] | None:
            if not args.py_spy:
                return None
            return py_spy(args.py_spy, server.pid, 600, data_dir / "add.pyspy")

        rates = await ingestion(server.address, embedder, texts, args.rounds, args.adds, profile_adds)
        print_ingestion(rates, args.adds, args.rounds)
        if (data_dir / "add.pyspy").exists():
            print_profile(data_dir / "add.pyspy", "store_long_memory with 16 clients", ADD_PARTS)

        grown: list[Grown] = []
        results: list[Latency] = []
        parts: dict[int, dict[str, float]] = {}
        have = 0
        for size in sizes:
            if size <= args.api_seed_max:
                print(f"\ngrowing {SEARCH_USER} to {size} memories through the API ...", flush=True)
                grown.append(await grow_api(server.address, texts, have, size, 256))
            else:
                print(f"\nseeding {SEARCH_USER} to {size} memories by the direct path ...", flush=True)
                server.stop()
                rows_s = await seed_rows(data_dir, texts, size - have)
                start = time.perf_counter()
                server = MemoryServer(data_dir, extra_env).start(timeout=4 * 3600)
                drain_s = time.perf_counter() - start
                grown.append(
                    Grown(
                        size,
                        f"direct: {size - have} rows by MemoryStore.add in {rows_s:.0f} s, vectors by the "
                        f"server's outbox drain at start-up in {drain_s:.0f} s",
                        rows_s + drain_s,
                    )
                )
            have = size
            print(f"  {grown[-1].how}, {grown[-1].seconds:.0f} s", flush=True)
            results.append(await search_latency(server.address, embedder, size, queries, args.rounds))
            if args.py_spy and size == sizes[-1]:  # one more pass under the profiler, not counted
                spy = py_spy(args.py_spy, server.pid, 600, data_dir / "search.pyspy")
                await asyncio.sleep(0.5)
                await search_latency(server.address, embedder, size, queries[:100], 1)
                spy.send_signal(signal.SIGINT)
                spy.wait()
            if args.breakdown:
                server.stop()
                parts[size] = await breakdown(data_dir, embedder, queries[: args.breakdown])
                server = MemoryServer(data_dir, extra_env).start(timeout=600)
            lat = results[-1]
            print(
                f"  search p50 {statistics.median(lat.search):.1f} ms, embed p50 "
                f"{statistics.median(lat.embed):.1f} ms",
                flush=True,
            )
        print_latency(results, grown)
        record(args, rates, results)
        print_breakdown(parts)
        if args.py_spy and (data_dir / "search.pyspy").exists():
            print_profile(data_dir / "search.pyspy", "the largest size's searches", SEARCH_PARTS)
    finally:
        server.stop()


def record(args: argparse.Namespace, rates: dict[str, list[float]], results: list[Latency]) -> None:
    """The main figures for REPORT.md (bench/report.py): ingestion rates against the batched model,
    search latency against the model embedding the query alone."""
    rec = Recorder(
        "memory_bench", "quick" if args.quick else "", config={"sizes": args.sizes, "adds": args.adds}
    )
    names = list(rates)
    batched = statistics.median(rates[names[1]])
    for name, values in rates.items():
        base = None if name == names[1] else names[1]
        rec.value(name, statistics.median(values), n=len(values), unit="memories/s", baseline=base,
                  baseline_median=batched if base else None)  # fmt: skip
    for lat in results:
        rec.samples(f"model embeds one query ({lat.size} memories)", lat.embed)
        rec.samples(f"search_memory p50 ({lat.size} memories)", lat.search,
                    baseline=f"model embeds one query ({lat.size} memories)")  # fmt: skip
    rec.save()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="memories in the searched user's memory")
    parser.add_argument(
        "--quick", action="store_true", help="sizes 1000,10000, fewer calls, API growth to 1000 (make bench)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--adds", type=int, default=300, help="texts per ingestion case and round")
    parser.add_argument("--searches", type=int, default=300, help="searches per size")
    parser.add_argument(
        "--api-seed-max", type=int, default=10000, help="grow through the API up to this size, then seed"
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the server process (repeatable), e.g. OMP_NUM_THREADS=1",
    )
    parser.add_argument(
        "--breakdown", type=int, default=100, help="queries for the per-part timing of a search (0: none)"
    )
    parser.add_argument(
        "--py-spy",
        default="",
        help="path of py-spy: profile the server (16-client adds, largest size searches)",
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes = "1000,10000"
        args.adds = min(args.adds, 150)
        args.searches = min(args.searches, 150)
        args.api_seed_max = min(args.api_seed_max, 1000)
    extra_env = dict(item.split("=", 1) for item in args.server_env)
    print(f"memory benchmark: sizes {args.sizes}, {args.rounds} rounds, {args.adds} adds per case and round")
    print(f"machine: {machine()}" + (f"; server env {extra_env}" if extra_env else ""))
    with tempfile.TemporaryDirectory(prefix="sk-membench-") as tmp:
        asyncio.run(run(args, Path(tmp), extra_env))
    print(f"\nmachine at the end: {machine()}")


if __name__ == "__main__":
    main()
