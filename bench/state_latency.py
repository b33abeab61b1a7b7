"""State latency and throughput of the SDK against a bare gRPC echo, in the same run on the same machine.

Both servers run in their own processes (like a deployment: the client never shares a GIL with
them). Rounds interleave the echo baseline and the SDK operations, so machine noise hits all of
them alike; ratios, not absolute times, are the result (``make bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "sdk"), str(ROOT)]

from sessionkit import AsyncSession, Session  # noqa: E402
from tests.servers import wait_serving  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from report import Recorder  # noqa: E402

RECORDER = Recorder("state_latency")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_servers(data_dir: Path, database_url: str) -> tuple[list[subprocess.Popen[bytes]], str, str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'sdk'}{os.pathsep}{ROOT}"}
    sk_port, echo_port = free_port(), free_port()
    sk = subprocess.Popen(
        # --http-port 0: the state service alone, without the default gateway's work (and port 8080).
        [
            sys.executable,
            "-m",
            "sessionkit.cli",
            "serve",
            "--service",
            "state",
            "--port",
            str(sk_port),
            "--http-port",
            "0",
        ],
        env={
            **env,
            "SESSIONKIT_DATA_DIR": str(data_dir),
            "SESSIONKIT_DATABASE_URL": database_url,
            "SESSIONKIT_LOG_LEVEL": "WARNING",
        },
        stderr=subprocess.DEVNULL,
    )
    echo = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "echo_server.py"), str(echo_port)],
        env=env,
        stdout=subprocess.PIPE,
    )
    assert echo.stdout is not None
    echo.stdout.readline()
    wait_serving(f"127.0.0.1:{sk_port}")
    return [sk, echo], f"127.0.0.1:{sk_port}", f"127.0.0.1:{echo_port}"


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


async def atimed(fn: Callable[[], Awaitable[object]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def report(title: str, samples: dict[str, list[float]], args: argparse.Namespace) -> None:
    base = statistics.median(next(iter(samples.values())))
    baseline = next(iter(samples))
    for name, values in samples.items():  # for REPORT.md (bench/report.py)
        RECORDER.samples(
            f"{title}: {name}", values, baseline=None if name == baseline else f"{title}: {baseline}"
        )
    print(f"\nLatency: {title} ({args.calls} calls each, {args.rounds} interleaved rounds)")
    print(f"{'operation':26} {'p50 ms':>8} {'p99 ms':>8} {'p50 / echo':>11}")
    for name, values in samples.items():
        p50 = statistics.median(values)
        print(f"{name:26} {p50:8.3f} {percentile(values, 0.99):8.3f} {p50 / base:10.2f}x")


async def throughput(fn: Callable[[int], Awaitable[object]], clients: int, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await fn(i)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000, help="calls per operation (split into rounds)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--database-url", default="", help="default: a SQLite file in a temp dir")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients for throughput")
    args = parser.parse_args()

    RECORDER.variant = "postgres" if args.database_url.startswith("postgres") else "sqlite"
    RECORDER.config = {"calls": args.calls, "rounds": args.rounds, "clients": args.clients}
    with tempfile.TemporaryDirectory() as tmp:
        print(f"state store: {args.database_url or 'SQLite (embedded default, read cache on)'}")
        procs, sk_addr, echo_addr = start_servers(Path(tmp), args.database_url)
        try:
            run(args, sk_addr, echo_addr, Path(tmp))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)
    RECORDER.save()


def sqlite_commit(path: Path) -> Callable[[], object]:
    """One durable SQLite transaction of one row, as the store's settings make it (WAL,
    synchronous=FULL), on the same disk as the server's database: the floor of a durable write."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v INTEGER)")
    conn.execute("INSERT OR REPLACE INTO t VALUES (1, 0)")
    counter = iter(range(10**9))

    def commit() -> object:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE t SET v = ? WHERE id = 1", (next(counter),))
        return conn.execute("COMMIT")

    return commit


async def pg_commit(url: str) -> Callable[[], Awaitable[object]]:
    """One durable PostgreSQL transaction of one row (synchronous_commit on): the floor of a write."""
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    await conn.execute("CREATE TABLE IF NOT EXISTS bench_commit_durable (id int PRIMARY KEY, v bigint)")
    await conn.execute("INSERT INTO bench_commit_durable VALUES (1, 0) ON CONFLICT DO NOTHING")
    counter = iter(range(10**9))

    async def commit() -> object:
        return await conn.execute("UPDATE bench_commit_durable SET v = $1 WHERE id = 1", next(counter))

    return commit


def run(args: argparse.Namespace, sk_addr: str, echo_addr: str, tmp: Path) -> None:
    channel = grpc.insecure_channel(echo_addr)
    echo_call = channel.unary_unary("/bench.Echo/Echo")
    payload = b"x" * 64
    session = Session("bench", address=sk_addr)
    session.save_state({"counter": 0, "profile": {"name": "Ada", "plan": "pro"}})
    counter = iter(range(10**9))

    ops: dict[str, Callable[[], object]] = {
        "grpc echo (baseline)": lambda: echo_call(payload),
        "get_state": lambda: session.get_state("profile"),
        "set_state": lambda: session.set_state("counter", next(counter)),
        "increment_state": lambda: session.increment_state("n"),
        "restore_state": lambda: session.restore_state(),
    }
    for fn in ops.values():  # warm up connections, caches, JIT-free paths
        timed(fn, 100)
    samples: dict[str, list[float]] = {name: [] for name in ops}
    per_round = max(1, args.calls // args.rounds)
    for _ in range(args.rounds):
        for name, fn in ops.items():
            samples[name] += timed(fn, per_round)

    report("Session (sync) vs a bare gRPC echo", samples, args)

    async def async_part() -> None:
        achannel = grpc.aio.insecure_channel(echo_addr)
        aecho = achannel.unary_unary("/bench.Echo/Echo")
        single = AsyncSession("bench", address=sk_addr)
        if args.database_url:
            durable = await pg_commit(args.database_url)
        else:
            commit_sync = sqlite_commit(tmp / "commit-baseline.db")

            async def durable() -> object:
                return commit_sync()

        aops: dict[str, Callable[[], Awaitable[object]]] = {
            "grpc.aio echo (baseline)": lambda: aecho(payload),
            "durable commit alone": durable,
            "get_state": lambda: single.get_state("profile"),
            "set_state": lambda: single.set_state("counter", next(counter)),
            "increment_state": lambda: single.increment_state("n"),
            "restore_state": lambda: single.restore_state(),
        }
        for fn in aops.values():
            await atimed(fn, 100)
        asamples: dict[str, list[float]] = {name: [] for name in aops}
        for _ in range(args.rounds):
            for name, fn in aops.items():
                asamples[name] += await atimed(fn, per_round)
        report("AsyncSession vs a bare grpc.aio echo, same client stack", asamples, args)
        echo50, commit50 = (
            statistics.median(asamples[n]) for n in ("grpc.aio echo (baseline)", "durable commit alone")
        )
        for name in ("set_state", "increment_state"):
            margin = statistics.median(asamples[name]) - echo50 - commit50
            print(f"{name}: p50 - (echo p50 + durable commit p50) = {margin:+.3f} ms (target <= +0.3)")

        sessions = [AsyncSession(f"bench-{i}", address=sk_addr) for i in range(args.clients)]
        for s in sessions:
            await s.set_state("k", 0)

        async def echo_op(i: int) -> object:
            return await aecho(payload)

        async def get_op(i: int) -> object:
            return await sessions[i].get_state("k")

        async def set_op(i: int) -> object:
            return await sessions[i].set_state("k", i)

        print(f"\nThroughput, AsyncSession, {args.clients} concurrent clients, one client process")
        rates = {}
        for name, op in (("grpc echo (baseline)", echo_op), ("get_state", get_op), ("set_state", set_op)):
            rates[name] = await throughput(op, args.clients, 3.0)
        for name, rate in rates.items():
            RECORDER.value(
                f"throughput {args.clients} clients: {name}",
                rate,
                n=1,
                unit="ops/s",
                baseline=None
                if name.startswith("grpc echo")
                else f"throughput {args.clients} clients: grpc echo (baseline)",
            )
            print(f"{name:24} {rate:10.0f} ops/s {rate / rates['grpc echo (baseline)']:8.2f}x of echo")
        await achannel.close()

    asyncio.run(async_part())


if __name__ == "__main__":
    main()
