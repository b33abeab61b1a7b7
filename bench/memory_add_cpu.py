"""Where concurrent memory adds spend their time and CPU, in one process (no gRPC, no client): N tasks
call ``MemoryService.add`` (SQLite, embedded Chroma, the server's embedder) against the model alone
embedding as many texts in batches of 64, in rounds. Printed per round: each step's wall time per
call, the CPU per add of each thread (from /proc: the model's thread, SQLite's writer and readers,
Chroma's, the event loop, and threads outside Python's list such as ONNX Runtime's), and the same for
``add_many`` (64 per call). CPU per add is the figure that a loaded machine moves least; the wall-clock
ratios move with the load. Linux only (/proc).

``PYTHONPATH=$PWD/sdk:$PWD .venv/bin/python bench/memory_add_cpu.py [--adds 320] [--clients 16]``
(docs/BENCHMARKS.md, "Issue 15 item 3").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from memory_dataset import scale_texts

from sessionkit_server.common.db import Database
from sessionkit_server.common.identity import Owner
from sessionkit_server.memory.base import NewMemory
from sessionkit_server.memory.service import MemoryService
from sessionkit_server.memory.store import MemoryStore
from sessionkit_server.retrieval.embeddings import LocalEmbedder
from sessionkit_server.retrieval.vector_index import ChromaIndex


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of each thread of this process, by thread name (pools merged)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = defaultdict(float)
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        name = names.get(int(tid), "other (not a Python thread)")
        out[name.rsplit("_", 1)[0]] += (int(fields[11]) + int(fields[12])) / tick
    return out


def per_item(before: dict[str, float], after: dict[str, float], count: int) -> str:
    spent = {name: (after[name] - before.get(name, 0.0)) * 1000 / count for name in after}
    return ", ".join(f"{name} {ms:.2f}" for name, ms in sorted(spent.items(), key=lambda x: -x[1]) if ms > 0)


class StepTimer:
    """Wall time per call of some of the service's steps (wrapped on the instances)."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, obj: Any, name: str, label: str) -> None:
        step: Callable[..., Awaitable[Any]] = getattr(obj, name)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await step(*args, **kwargs)
            finally:
                self.spent[label] += time.perf_counter() - started
                self.calls[label] += 1

        setattr(obj, name, timed)

    def report(self) -> str:
        lines = [
            f"    {k:28} {self.calls[k]:5d} calls, {1000 * v / self.calls[k]:7.1f} ms each"
            for k, v in self.spent.items()
        ]
        self.spent.clear()
        self.calls.clear()
        return "\n".join(lines)


async def run(adds: int, clients: int, rounds: int) -> None:
    texts: Iterator[str] = iter(scale_texts())
    with tempfile.TemporaryDirectory(prefix="sk-addcpu-") as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'memory.db'}")
        index = ChromaIndex.embedded(Path(tmp) / "chroma")
        embedder = LocalEmbedder()
        await embedder.warm_up()
        service = MemoryService(MemoryStore(db), index, embedder)
        await service.start()
        steps = StepTimer()
        steps.wrap(service, "_same_content", "same-content read")
        steps.wrap(service._add_embedder, "embed_one", "embedding (coalesced)")
        steps.wrap(service, "_merge_into_neighbour", "near-duplicate check")
        steps.wrap(service.store, "add", "the row's transaction")
        await service.add(Owner("app", "u1", "s0"), "warm-up memory")
        try:
            for r in range(rounds):
                batch = [next(texts) for _ in range(adds)]
                cpu, started = time.process_time(), time.perf_counter()
                await embedder.embed(batch)
                model = adds / (time.perf_counter() - started)
                model_cpu = (time.process_time() - cpu) * 1000 / adds

                queue = iter([next(texts) for _ in range(adds)])

                async def client(n: int, queue: Iterator[str] = queue) -> None:
                    owner = Owner("app", "u1", f"s{n}")
                    for text in queue:
                        await service.add(owner, text)

                before, cpu, started = thread_cpu(), time.process_time(), time.perf_counter()
                await asyncio.gather(*(client(n) for n in range(clients)))
                rate = adds / (time.perf_counter() - started)
                add_cpu = (time.process_time() - cpu) * 1000 / adds
                print(
                    f"round {r + 1}: model alone, batches of 64: {model:.1f} texts/s, "
                    f"{model_cpu:.1f} ms CPU each"
                )
                print(
                    f"  add, {clients} clients: {rate:.1f}/s = {rate / model:.2f}x; "
                    f"{add_cpu:.1f} ms CPU per add"
                )
                print(f"    CPU ms per add by thread: {per_item(before, thread_cpu(), adds)}")
                print(steps.report())

                batch = [next(texts) for _ in range(adds)]
                owner = Owner("app", "u1", "s-batch")
                before, cpu, started = thread_cpu(), time.process_time(), time.perf_counter()
                for at in range(0, adds, 64):
                    await service.add_many(owner, [NewMemory(text) for text in batch[at : at + 64]])
                rate = adds / (time.perf_counter() - started)
                many_cpu = (time.process_time() - cpu) * 1000 / adds
                print(
                    f"  add_many, 64 per call: {rate:.1f}/s = {rate / model:.2f}x; "
                    f"{many_cpu:.1f} ms CPU per memory"
                )
                print(f"    CPU ms per memory by thread: {per_item(before, thread_cpu(), adds)}", flush=True)
        finally:
            await service.close()
            await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--adds", type=int, default=320, help="adds per case and round")
    parser.add_argument("--clients", type=int, default=16, help="concurrent callers of add")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()}")
    asyncio.run(run(args.adds, args.clients, args.rounds))
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
