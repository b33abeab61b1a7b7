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
import itertools
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from memory_common import MemoryServer, machine, percentile
from memory_dataset import scale_queries, scale_texts

from sessionkit import AsyncSession
from sessionkit.memory_client import MemoryClient
from sessionkit_server.common.db import Database
from sessionkit_server.memory import tables as t
from sessionkit_server.memory.service import content_hash
from sessionkit_server.memory.store import MemoryRecord, MemoryStore, Owner, vector_collection
from sessionkit_server.retrieval.embeddings import LocalEmbedder
from sessionkit_server.retrieval.vector_index import ChromaIndex

INGEST_APP = "bench-ingest"
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


# -- ingestion -----------------------------------------------------------------------------------------


async def add_many(
    address: str, app: str, user: str, texts: list[str], clients: int, tag: str
) -> tuple[float, Counter[str]]:
    """Add ``texts`` as long-term memories of ``user`` with ``clients`` concurrent sessions: (adds per
    second, outcome counts: new / merged / deduplicated)."""
    sessions = [
        AsyncSession(f"{tag}-{i}", user_id=user, address=address, app_name=app) for i in range(clients)
    ]
    for session in sessions:  # connect first: connection set-up is not ingestion
        await session.get_state("x")
    queue = iter(texts)
    outcomes: Counter[str] = Counter()

    async def worker(session: AsyncSession) -> None:
        for text in queue:
            reply = await session.store_long_memory(text)
            assert reply is not None
            outcomes["merged" if reply["merged"] else "deduplicated" if reply["deduplicated"] else "new"] += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(s) for s in sessions))
    rate = len(texts) / (time.perf_counter() - start)
    for session in sessions:
        await session.close()
    return rate, outcomes


async def add_batches(
    address: str, app: str, user: str, texts: list[str], per_call: int, tag: str
) -> tuple[float, Counter[str]]:
    """Add ``texts`` as long-term memories of ``user`` through AddMemories, ``per_call`` per call, from
    one client: (memories per second, outcome counts)."""
    session = AsyncSession(tag, user_id=user, address=address, app_name=app)
    await session.get_state("x")  # connect first
    # The SDK's MemoryClient over the session's transport: AsyncSession.add_memories sends this call.
    client = MemoryClient(session._transport)
    outcomes: Counter[str] = Counter()
    start = time.perf_counter()
    for at in range(0, len(texts), per_call):
        for reply in await client.add_many(session._ref, texts[at : at + per_call]):
            outcomes["merged" if reply["merged"] else "deduplicated" if reply["deduplicated"] else "new"] += 1
    rate = len(texts) / (time.perf_counter() - start)
    await session.close()
    return rate, outcomes


async def model_one_by_one(embedder: LocalEmbedder, texts: list[str]) -> float:
    start = time.perf_counter()
    for text in texts:
        await embedder.embed_one(text)
    return len(texts) / (time.perf_counter() - start)


async def model_batched(embedder: LocalEmbedder, texts: list[str]) -> float:
    start = time.perf_counter()
    await embedder.embed(texts)  # batches of LOCAL_BATCH_SIZE (64), as the server's outbox drain
    return len(texts) / (time.perf_counter() - start)


async def ingestion(
    address: str,
    embedder: LocalEmbedder,
    texts: Iterator[str],
    rounds: int,
    per_case: int,
    profile: Callable[[], subprocess.Popen[bytes] | None] = lambda: None,
) -> dict[str, list[float]]:
    """Rates per case and round; then, if ``profile`` starts a profiler of the server, one more
    16-client case under it (not counted: the profiler takes CPU)."""
    rates: dict[str, list[float]] = {}
    outcomes: Counter[str] = Counter()
    cases: list[tuple[str, Callable[[list[str]], Awaitable[float]]]] = [
        ("model alone, one text per call", lambda xs: model_one_by_one(embedder, xs)),
        ("model alone, batches of 64", lambda xs: model_batched(embedder, xs)),
    ]
    for clients in (1, 4, 16):

        async def add_case(xs: list[str], clients: int = clients) -> float:
            rate, counts = await add_many(address, INGEST_APP, "ingest-user", xs, clients, f"c{clients}")
            outcomes.update(counts)
            return rate

        label = "(one by one)" if clients == 1 else ""
        cases.append((f"store_long_memory, {clients} client{'s' if clients > 1 else ''} {label}", add_case))
    for per_call in (64, 256):

        async def batch_case(xs: list[str], per_call: int = per_call) -> float:
            rate, counts = await add_batches(address, INGEST_APP, "ingest-user", xs, per_call, f"b{per_call}")
            outcomes.update(counts)
            return rate

        cases.append((f"AddMemories, {per_call} per call, 1 client", batch_case))
    for r in range(rounds):
        for name, case in cases:
            batch = list(itertools.islice(texts, per_case))
            rates.setdefault(name, []).append(await case(batch))
        print(f"  ingestion round {r + 1}/{rounds} done", flush=True)
    spy = profile()
    if spy is not None:
        await asyncio.sleep(0.5)
        await cases[4][1](list(itertools.islice(texts, per_case)))  # store_long_memory, 16 clients
        spy.send_signal(signal.SIGINT)  # py-spy writes what it has recorded on SIGINT
        spy.wait()
    print(f"  adds: {dict(outcomes)}")
    return rates


def print_ingestion(rates: dict[str, list[float]], per_case: int, rounds: int) -> None:
    names = list(rates)
    one = statistics.median(rates[names[0]])
    batched = statistics.median(rates[names[1]])
    print(f"\nIngestion ({per_case} distinct texts per case and round, {rounds} interleaved rounds, median)")
    print(f"{'case':52} {'memories/s':>10} {'/ model 1-by-1':>15} {'/ model batched':>16}")
    for name in names:
        rate = statistics.median(rates[name])
        print(f"{name:52} {rate:10.1f} {rate / one:14.2f}x {rate / batched:15.2f}x")


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


# -- main ---------------------------------------------------------------------------------------------------


def py_spy(path: str, pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [path, "record", "-p", str(pid), "-o", str(out), "-f", "raw", "-r", "200", "-d", str(seconds)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


#: Leaf frames of a thread that waits (py-spy samples some waiting threads as active).
IDLE = ("thread.py:81)", "Condition.wait", "EpollSelector.select", "Thread.run (threading.py:982)")
#: (part, markers): a busy sample belongs to the first part with a marker in its stack.
SEARCH_PARTS = (
    ("Chroma query (the user's partition)", ("Collection.query",)),
    ("FTS5 lexical query (MemoryStore.lexical)", ("MemoryStore.lexical",)),
    ("rows of the candidates (MemoryStore.by_ids)", ("MemoryStore.by_ids",)),
    ("query embedding (the model)", ("_encode",)),
)
ADD_PARTS = (
    ("SQLite commits (fsync, synchronous=FULL)", ("do_commit",)),
    ("Chroma upsert (outbox drain)", ("Collection.upsert",)),
    ("Chroma query (near-duplicate check, the user's partition)", ("Collection.query",)),
    ("embedding (the model, concurrent adds coalesced)", ("_encode",)),
    ("row insert (MemoryStore.add)", ("MemoryStore.add",)),
    ("exact-duplicate lookup (MemoryStore.by_hash)", ("MemoryStore.by_hash",)),
    (
        "outbox bookkeeping (pending, rows_for_index, done)",
        ("MemoryStore.pending", "MemoryStore.rows_for_index", "MemoryStore.done"),
    ),
)


def print_profile(
    raw: Path, title: str, parts_of: tuple[tuple[str, tuple[str, ...]], ...], top: int = 10
) -> None:
    """Busy samples of py-spy's raw (collapsed) stacks by part, and the top leaf frames."""
    parts: Counter[str] = Counter()
    own: Counter[str] = Counter()
    busy = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if any(frames[-1].startswith(idle) or frames[-1].endswith(idle) for idle in IDLE):
            continue
        n = int(count)
        busy += n
        own[frames[-1]] += n
        part = next(
            (name for name, markers in parts_of if any(m in stack for m in markers)),
            "other (gRPC, asyncio, SQLAlchemy, fusion, ...)",
        )
        parts[part] += n
    print(f"\npy-spy, the server during {title}: {busy} busy samples (all threads)")
    for name, n in parts.most_common():
        print(f"  {n / busy * 100:5.1f}%  {name}")
    print("  busiest leaf frames:")
    for frame, n in own.most_common(top):
        print(f"  {n / busy * 100:5.1f}%  {frame[:110]}")


async def breakdown(data_dir: Path, embedder: LocalEmbedder, queries: list[str]) -> dict[str, float]:
    """p50 ms of each building block of a search, run in this process on the stopped server's data: the
    Chroma query of the user's partition (as the service makes it), the FTS5 lexical query (as the
    service makes it, and with the query's stop words kept, as before), and the rows of the
    candidates."""
    db = Database(f"sqlite:///{data_dir / 'sessionkit.db'}")
    store = MemoryStore(db)
    index = ChromaIndex.embedded(data_dir / "chroma")
    owner = Owner(SEARCH_APP, SEARCH_USER, "search-session")
    partition = vector_collection(SEARCH_APP, SEARCH_USER, t.LONG, "")
    times: dict[str, list[float]] = {}

    def timed(name: str, start: float) -> None:
        times.setdefault(name, []).append((time.perf_counter() - start) * 1e3)

    try:
        for n, q in enumerate(queries):
            vector = await embedder.embed_one(q)
            now = time.time_ns() // 1000
            start = time.perf_counter()
            dense = await index.query(partition, vector, 40)
            timed("Chroma, user's partition", start)
            start = time.perf_counter()
            lexical = await store.lexical(owner, None, q, 40, now)
            timed("FTS5 lexical", start)
            start = time.perf_counter()
            await store.lexical(owner, None, q, 40, now, keep_stop_words=True)
            timed("FTS5, stop words kept", start)
            candidates = list({memory_id for memory_id, _ in dense + lexical})
            start = time.perf_counter()
            await store.by_ids(owner, candidates, now)
            timed("rows (by_ids)", start)
            if n == 0:  # the first call of each opens files: not measured
                times.clear()
    finally:
        await index.close()
        await db.close()
    return {name: statistics.median(values) for name, values in times.items()}


def print_breakdown(parts: dict[int, dict[str, float]]) -> None:
    if not parts:
        return
    names = list(dict.fromkeys(name for values in parts.values() for name in values))
    print("\nParts of a search, each alone in this process on the stopped server's data (p50 ms):")
    print(f"{'memories':>9} " + " ".join(f"{name:>24}" for name in names))
    for size, values in parts.items():
        cells = (f"{values[name]:24.1f}" if name in values else f"{'-':>24}" for name in names)
        print(f"{size:9d} " + " ".join(cells))
    print(
        "(Chroma = the user's long-term partition, no filter, k 40; FTS5 = MemoryStore.lexical, k 40, as\n"
        " the service asks (stop words dropped) and with them kept; rows = by_ids of the candidates)"
    )


async def run(args: argparse.Namespace, data_dir: Path, extra_env: dict[str, str]) -> None:
    sizes = sorted(int(s) for s in args.sizes.split(","))
    texts = scale_texts()
    queries = scale_queries(args.searches + 20)
    queries = queries[20:] + queries[:20]  # the warm-up queries are measured last, not first
    embedder = LocalEmbedder()
    await embedder.warm_up()
    server = MemoryServer(data_dir, extra_env).start()
    try:
        warm = AsyncSession("warm", user_id="warm", address=server.address, app_name="bench-warm")
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
        print_breakdown(parts)
        if args.py_spy and (data_dir / "search.pyspy").exists():
            print_profile(data_dir / "search.pyspy", "the largest size's searches", SEARCH_PARTS)
    finally:
        server.stop()


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
