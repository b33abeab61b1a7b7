"""Replicas on one machine: state writes, state reads and memory searches per second through
`sessionkit cluster` topologies with 1 and 3 replicas of each service (PostgreSQL, one Chroma server),
and the latency of the 3-replica topology against one `sessionkit serve` process (every service in it)
on the same database, in the same run, as ratios (``make bench``; docs/CLUSTER.md says what a 2-core
machine can and cannot show)."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "sdk"), str(ROOT)]

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from sessionkit.config import ClientSettings  # noqa: E402
from sessionkit.memory_client import MemoryClient  # noqa: E402
from sessionkit.retry import RetryPolicy  # noqa: E402
from sessionkit.state_client import StateClient  # noqa: E402
from sessionkit.transport import Transport, close_channels  # noqa: E402
from sessionkit_server.cluster.processes import Cluster, create_database  # noqa: E402
from sessionkit_server.cluster.topology import SERVICES, plan  # noqa: E402
from tests.chroma_server import ChromaServer  # noqa: E402
from tests.cluster import support  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.servers import wait_serving  # noqa: E402

Op = Callable[[int], Awaitable[object]]


async def throughput(op: Op, workers: int, seconds: float) -> float:
    """Operations per second of ``workers`` concurrent loops of ``op`` for ``seconds``."""
    done = 0
    end = time.monotonic() + seconds

    async def loop(worker: int) -> None:
        nonlocal done
        i = 0
        while time.monotonic() < end:
            await op(worker * 1_000_000 + i)
            i += 1
            done += 1

    start = time.monotonic()
    await asyncio.gather(*(loop(w) for w in range(workers)))
    return done / (time.monotonic() - start)


async def latency(op: Op, calls: int) -> float:
    """Median seconds of one call, one at a time."""
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        await op(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def clients(targets: dict[str, str]) -> tuple[StateClient, MemoryClient]:
    """Clients reaching each service at its own target (an address list: round_robin over it)."""
    settings = ClientSettings(**{f"{name}_address": targets[name] for name in SERVICES})
    transport = Transport(settings, None, Path("."), RetryPolicy(deadline=60.0))
    return StateClient(transport), MemoryClient(transport)


async def measure(targets: dict[str, str], args: argparse.Namespace) -> dict[str, float]:
    state, memory = clients(targets)
    ref = support.new_ref("bench")
    await state.create_session(ref)
    for i in range(30):
        await memory.add(ref, f"fact {i}: the user {uuid.uuid4().hex[:6]} likes topic number {i}")
    out = {
        "writes/s": await throughput(
            lambda i: state.set_value(ref, f"k{i % 50}", i), args.workers, args.seconds
        ),
        "reads/s": await throughput(lambda i: state.get_state(ref), args.workers, args.seconds),
        "searches/s": await throughput(
            lambda i: memory.search(ref, f"topic number {i % 30}"), args.workers, args.seconds
        ),
        "read p50 ms": 1e3 * await latency(lambda i: state.get_state(ref), args.calls),
        "write p50 ms": 1e3 * await latency(lambda i: state.set_value(ref, "one", i), args.calls),
        "search p50 ms": 1e3 * await latency(lambda i: memory.search(ref, "topic number 3"), args.calls),
    }
    await close_channels()
    return out


def model_env(args: argparse.Namespace) -> dict[str, str]:
    """The model threads of every process, the same in each topology. The manifests' 2 fit a pod with
    2 CPUs of its own; six model processes with 2 spinning threads each on a 2-core machine measure
    the oversubscription (memory searches fell to a tenth), not the topology."""
    threads = str(args.model_threads)
    return {"SESSIONKIT_EMBEDDING_THREADS": threads, "SESSIONKIT_AGENT_OFFLINE_THREADS": threads}


def run_topology(
    replicas: int, database_url: str, vector_url: str, args: argparse.Namespace
) -> dict[str, float]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"sessionkit-bench-{replicas}-"))
    hosts = [f"127.0.0.{i + 2}" for i in range(replicas)]
    topology = plan(
        run_dir=run_dir,
        database_url=database_url,
        replicas=replicas,
        base_port=support.free_base_port(hosts, len(SERVICES)),
        http_port=free_port(),
        vector_url=vector_url,
        extra_env={name: model_env(args) for name in SERVICES},
    )
    cluster = Cluster(topology)
    cluster.up(timeout=600)
    try:
        return asyncio.run(measure({name: topology.target(name) for name in SERVICES}, args))
    finally:
        cluster.down()
        shutil.rmtree(run_dir, ignore_errors=True)


def run_single(database_url: str, vector_url: str, args: argparse.Namespace) -> dict[str, float]:
    data = Path(tempfile.mkdtemp(prefix="sessionkit-bench-serve-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONKIT_")}
    env.update(
        SESSIONKIT_PORT=str(port),
        SESSIONKIT_HTTP_PORT="0",
        SESSIONKIT_DATABASE_URL=database_url,
        SESSIONKIT_VECTOR_URL=vector_url,
        SESSIONKIT_DATA_DIR=str(data),
        SESSIONKIT_LOG_LEVEL="WARNING",
        **model_env(args),
        PYTHONPATH=f"{ROOT / 'sdk'}{os.pathsep}{ROOT}",
    )
    with open(data / "serve.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "sessionkit.cli", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_serving(f"127.0.0.1:{port}", timeout=300)
        return asyncio.run(measure(dict.fromkeys(SERVICES, f"127.0.0.1:{port}"), args))
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/sessionkit_bench")
    parser.add_argument("--workers", type=int, default=8, help="concurrent client loops")
    parser.add_argument("--seconds", type=float, default=5.0, help="of each throughput measurement")
    parser.add_argument("--calls", type=int, default=100, help="sequential calls of each latency")
    parser.add_argument(
        "--model-threads",
        type=int,
        default=max(1, min(2, (os.cpu_count() or 2) - 1)),
        help="threads of each process's embedding model (default: one fewer than the cores, at most 2)",
    )
    args = parser.parse_args()
    asyncio.run(create_database(args.database_url))
    chroma_dir = Path(tempfile.mkdtemp(prefix="sessionkit-bench-chroma-"))
    chroma = ChromaServer(chroma_dir).start()
    try:
        results = {
            "serve (1 process)": run_single(args.database_url, chroma.url, args),
            "1 replica each": run_topology(1, args.database_url, chroma.url, args),
            "3 replicas each": run_topology(3, args.database_url, chroma.url, args),
        }
    finally:
        chroma.stop()
        shutil.rmtree(chroma_dir, ignore_errors=True)
    table = Table(title=f"cluster bench ({os.cpu_count()} cores, {args.workers} client loops)")
    table.add_column("metric")
    for name in results:
        table.add_column(name, justify="right")
    table.add_column("3 replicas / serve", justify="right")
    base, replicated = results["serve (1 process)"], results["3 replicas each"]
    for metric in base:
        cells = [f"{r[metric]:.1f}" for r in results.values()]
        table.add_row(metric, *cells, f"{replicated[metric] / base[metric]:.2f}")
    Console().print(table)
    sys.path.insert(0, str(ROOT / "bench"))
    from report import Recorder

    rec = Recorder("cluster_bench", config={"workers": args.workers, "seconds": args.seconds})
    for topology, figures in results.items():  # for REPORT.md: each topology against one process
        for metric, value in figures.items():
            ref = None if topology == "serve (1 process)" else f"{metric}: serve (1 process)"
            rec.value(f"{metric}: {topology}", value, n=1, unit="", baseline=ref)
    rec.save()


if __name__ == "__main__":
    main()
