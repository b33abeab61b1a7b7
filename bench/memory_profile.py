"""Where the memory benchmark's time goes: py-spy profiles of the server, and a breakdown of one
search into its parts (Chroma, FTS5, rows) at each size."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections import Counter
from pathlib import Path

from memory_scale import SEARCH_APP, SEARCH_USER

from sessionkit_server.common.db import Database
from sessionkit_server.memory import tables as t
from sessionkit_server.memory.store import MemoryStore, Owner, vector_collection
from sessionkit_server.retrieval.embeddings import LocalEmbedder
from sessionkit_server.retrieval.vector_index import ChromaIndex


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
