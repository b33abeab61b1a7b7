"""Throughput and latency of the replicated topology (`sessionkit cluster`: N replicas of each service as
separate processes, on PostgreSQL and one Chroma server) against one `sessionkit serve` process on the
same database server and a Chroma server, in the same run (``make bench``).

Three topologies run one after another on fresh databases: ``serve`` (every service in one process),
``1 replica`` and ``N replicas`` of each service (the manifests' environment, `sessionkit cluster`'s
launcher). Against each, the same workload from this process: state writes (set_value), state reads
(get_state) and memory searches, by ``--clients`` concurrent clients for ``--seconds`` each, then one
client's sequential latency. The result is ratios against ``serve``: a 2-core machine cannot show what
replicas add in capacity (every process shares those two cores, and this client uses them too), only
what the distributed shape costs and that it holds under concurrent load (docs/SCALING.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "sdk"), str(ROOT)]

from sessionkit.config import ClientSettings  # noqa: E402
from sessionkit.memory_client import MemoryClient  # noqa: E402
from sessionkit.retry import RetryPolicy  # noqa: E402
from sessionkit.state_client import SessionRef, StateClient  # noqa: E402
from sessionkit.transport import Transport, close_channels  # noqa: E402
from sessionkit_server.cluster.processes import Cluster  # noqa: E402
from sessionkit_server.cluster.topology import SERVICES, plan  # noqa: E402
from tests.chroma_server import ChromaServer, free_port  # noqa: E402
from tests.cluster.support import free_base_port  # noqa: E402
from tests.servers import wait_serving  # noqa: E402

APP = "bench"
TOPICS = [
    "the user prefers window seats on long flights",
    "their daughter starts school in September",
    "allergic to peanuts and shellfish",
    "works remotely from Lisbon three days a week",
    "is training for a marathon in April",
    "drives an electric car and charges it at night",
    "reads science fiction before bed",
    "keeps a sourdough starter named Herbert",
]


@dataclass
class Figures:
    writes_per_s: float
    reads_per_s: float
    searches_per_s: float
    write_p50_ms: float
    read_p50_ms: float
    search_p50_ms: float


def clients(targets: dict[str, str]) -> tuple[StateClient, MemoryClient]:
    settings = ClientSettings(
        address="",
        state_address=targets["state"],
        memory_address=targets["memory"],
        knowledge_address=targets["knowledge"],
        agent_address=targets["agent"],
    )
    transport = Transport(settings, None, Path("."), RetryPolicy(deadline=300.0))
    return StateClient(transport), MemoryClient(transport)


async def throughput(workers: list[Callable[[int], Awaitable[object]]], seconds: float) -> float:
    """Operations per second of ``workers`` running side by side for ``seconds``."""
    done = 0
    stop_at = time.perf_counter() + seconds

    async def loop(work: Callable[[int], Awaitable[object]]) -> None:
        nonlocal done
        n = 0
        while time.perf_counter() < stop_at:
            await work(n)
            n += 1
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(loop(w) for w in workers))
    return done / (time.perf_counter() - start)


async def latency(work: Callable[[int], Awaitable[object]], calls: int) -> float:
    times = []
    for n in range(calls):
        start = time.perf_counter()
        await work(n)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


async def workload(targets: dict[str, str], concurrency: int, seconds: float, calls: int) -> Figures:
    state, memory = clients(targets)
    refs = [SessionRef(APP, f"user-{i}", f"s-{uuid.uuid4().hex[:10]}") for i in range(concurrency)]
    for ref in refs:
        await state.create_session(ref)
    # Every client searches its own user's memories (the scope a turn searches).
    for i, ref in enumerate(refs):
        await memory.add_many(ref, [f"{topic} (note {i}.{k})" for k, topic in enumerate(TOPICS * 4)])
    # Warm every replica's channel and model before timing.
    for ref in refs:
        await state.get_state(ref)
        await memory.search(ref, "warm up", limit=3)

    def writer(ref: SessionRef) -> Callable[[int], Awaitable[object]]:
        return lambda n: state.set_value(ref, "counter", n)

    def reader(ref: SessionRef) -> Callable[[int], Awaitable[object]]:
        return lambda n: state.get_state(ref)

    def searcher(ref: SessionRef) -> Callable[[int], Awaitable[object]]:
        return lambda n: memory.search(ref, TOPICS[n % len(TOPICS)].split(" the ")[-1], limit=5)

    writes = await throughput([writer(r) for r in refs], seconds)
    reads = await throughput([reader(r) for r in refs], seconds)
    searches = await throughput([searcher(r) for r in refs], seconds)
    figures = Figures(
        writes,
        reads,
        searches,
        await latency(writer(refs[0]), calls),
        await latency(reader(refs[0]), calls),
        await latency(searcher(refs[0]), max(20, calls // 5)),
    )
    await close_channels()
    return figures


async def pg_admin(admin_dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def database(admin_dsn: str) -> tuple[str, str]:
    name = f"sk_bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(pg_admin(admin_dsn, f'CREATE DATABASE "{name}"'))
    return name, f"{admin_dsn.rsplit('/', 1)[0]}/{name}"


def drop(admin_dsn: str, name: str) -> None:
    asyncio.run(pg_admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def run_serve(admin_dsn: str, work: Path, args: argparse.Namespace) -> Figures:
    """Every service in one `sessionkit serve` process, on its own Chroma server."""
    name, url = database(admin_dsn)
    chroma = ChromaServer(work / "serve-chroma").start(timeout=120)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'sdk'}{os.pathsep}{ROOT}",
        "SESSIONKIT_DATABASE_URL": url,
        "SESSIONKIT_VECTOR_URL": chroma.url,
        "SESSIONKIT_DATA_DIR": str(work / "serve-data"),
        "SESSIONKIT_LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessionkit.cli", "serve", "--port", str(port), "--http-port", "0"],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_serving(f"127.0.0.1:{port}", timeout=300)
        target = f"127.0.0.1:{port}"
        return asyncio.run(workload({s: target for s in SERVICES}, args.clients, args.seconds, args.calls))
    finally:
        proc.terminate()
        proc.wait(60)
        chroma.stop()
        drop(admin_dsn, name)


def run_cluster(admin_dsn: str, work: Path, replicas: int, args: argparse.Namespace) -> Figures:
    name, url = database(admin_dsn)
    topology = plan(
        run_dir=work / f"cluster-{replicas}",
        database_url=url,
        replicas=replicas,
        base_port=free_base_port([f"127.0.0.{i + 2}" for i in range(replicas)], len(SERVICES)),
        http_port=free_port(),
        chroma_port=free_port(),
    )
    cluster = Cluster(topology)
    cluster.up(timeout=900)
    try:
        return asyncio.run(
            workload({s: topology.target(s) for s in SERVICES}, args.clients, args.seconds, args.calls)
        )
    finally:
        cluster.down(timeout=60)
        drop(admin_dsn, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=8.0, help="per throughput phase")
    parser.add_argument("--calls", type=int, default=200, help="sequential calls of the latency phase")
    parser.add_argument("--quick", action="store_true", help="shorter phases (make bench)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.calls = 4.0, 100
    results: dict[str, Figures] = {}
    with tempfile.TemporaryDirectory(prefix="sk-cluster-bench-") as tmp:
        work = Path(tmp)
        print(f"cluster bench: {args.clients} clients, {args.seconds:g} s per phase, {os.cpu_count()} cores")
        results["serve (1 process)"] = run_serve(args.admin_dsn, work, args)
        results["1 replica each"] = run_cluster(args.admin_dsn, work, 1, args)
        results[f"{args.replicas} replicas each"] = run_cluster(args.admin_dsn, work, args.replicas, args)
    base = results["serve (1 process)"]
    print()
    print(
        f"{'topology':<20} {'writes/s':>14} {'reads/s':>14} {'searches/s':>14} "
        f"{'write p50':>14} {'read p50':>14} {'search p50':>14}"
    )
    for name, f in results.items():
        print(
            f"{name:<20} "
            f"{f.writes_per_s:>7.0f} ({f.writes_per_s / base.writes_per_s:4.2f}x)"
            f"{f.reads_per_s:>7.0f} ({f.reads_per_s / base.reads_per_s:4.2f}x)"
            f"{f.searches_per_s:>7.0f} ({f.searches_per_s / base.searches_per_s:4.2f}x)"
            f"{f.write_p50_ms:>6.1f} ms ({f.write_p50_ms / base.write_p50_ms:4.2f}x)"
            f"{f.read_p50_ms:>6.1f} ms ({f.read_p50_ms / base.read_p50_ms:4.2f}x)"
            f"{f.search_p50_ms:>6.1f} ms ({f.search_p50_ms / base.search_p50_ms:4.2f}x)"
        )
    print("\nratios are against serve (1 process); throughput higher is better, latency lower is better")


if __name__ == "__main__":
    main()
