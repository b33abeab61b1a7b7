"""Ingestion rates of the memory benchmark: adds one by one and in batches through the SDK, against
the embedding model alone (one text at a time and batched)."""

from __future__ import annotations

import asyncio
import itertools
import signal
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator

from sessionkit import AsyncSession
from sessionkit.memory_client import MemoryClient
from sessionkit_server.retrieval.embeddings import LocalEmbedder

INGEST_APP = "bench-ingest"


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
