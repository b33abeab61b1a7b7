"""Write latency with idle watchers: p50/p95 of a state write through the gateway (PUT
/v1/sessions/{id}/state/{key}) with 0 and then N idle SSE watchers of the same session (issue 14, item
12: 200 watchers made writes go from 16 ms to 500 ms p50).

Processes: ``sessionkit serve --service state --service gateway`` (SQLite in a temp directory, rate limit
off, watcher caps raised above N), and this process: one httpx client writing one value at a time, and
a second process holding N SSE streams (one connection each) that read every change as it comes, as
real watchers do (in its own process, so reading them does not slow the writer's event loop).

``--root DIR`` runs the server from another checkout (e.g. the main branch, to compare).
Run: ``.venv/bin/python bench/watch_bench.py [--watchers 200] [--writes 200]`` (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(root: Path, data_dir: Path, watchers: int) -> tuple[subprocess.Popen[bytes], str]:
    port, http_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SESSIONKIT_")},
        "PYTHONPATH": f"{root / 'sdk'}{os.pathsep}{root}",
        "HF_HUB_OFFLINE": "1",
        "SESSIONKIT_LOG_LEVEL": "WARNING",
        "SESSIONKIT_DATA_DIR": str(data_dir),
        "SESSIONKIT_RATE_LIMIT_PER_SECOND": "0",
        "SESSIONKIT_MAX_WATCHERS_PER_SESSION": str(watchers + 10),
        "SESSIONKIT_MAX_WATCHERS_PER_TENANT": str(watchers + 10),
    }
    argv = [sys.executable, "-m", "sessionkit.cli", "serve", "--service", "state", "--service", "gateway"]
    argv += ["--port", str(port), "--http-port", str(http_port)]
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start")


async def writes(http: httpx.AsyncClient, count: int) -> list[float]:
    times = []
    for n in range(count):
        start = time.perf_counter()
        reply = await http.put("/v1/sessions/w/state/counter", json={"value": n})
        reply.raise_for_status()
        times.append((time.perf_counter() - start) * 1000)
    return times


async def watcher(url: str, ready: asyncio.Event, counts: list[int], i: int, total: int) -> None:
    async with (
        httpx.AsyncClient(base_url=url, timeout=None) as http,
        http.stream("GET", "/v1/sessions/w/watch") as stream,
    ):
        async for line in stream.aiter_lines():
            if line.startswith("data:"):
                counts[i] += 1
                if sum(1 for c in counts if c) == total:
                    ready.set()


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(ordered[int(len(ordered) * 0.95) - 1], 2),
    }


async def watch_only(url: str, watchers: int) -> None:
    """``--watch-only``: hold the watchers; print a line when all are ready, and the changes they got
    (after their snapshots) when stdin closes."""
    ready, counts = asyncio.Event(), [0] * watchers
    tasks = [asyncio.create_task(watcher(url, ready, counts, i, watchers)) for i in range(watchers)]
    await asyncio.wait_for(ready.wait(), 120)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    print(sum(counts) - watchers, flush=True)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def run(url: str, watchers: int, count: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        (await http.post("/v1/sessions", json={"session_id": "w"})).raise_for_status()
        await writes(http, 20)  # warm up
        idle = summary(await writes(http, count))
        argv = [sys.executable, __file__, "--watch-only", url, "--watchers", str(watchers)]
        child = await asyncio.create_subprocess_exec(*argv, stdin=PIPE, stdout=PIPE)
        assert child.stdout is not None and child.stdin is not None
        await asyncio.wait_for(child.stdout.readline(), 120)  # every watcher has its snapshot
        watched = summary(await writes(http, count))
        await asyncio.sleep(1)
        child.stdin.close()
        delivered = int((await child.stdout.readline()) or 0)
        await child.wait()
    return {
        "writes": count,
        "watchers": watchers,
        "write_with_0_watchers": idle,
        f"write_with_{watchers}_watchers": watched,
        "changes_delivered_per_watcher": round(delivered / watchers, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watchers", type=int, default=200)
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose server to run")
    parser.add_argument("--watch-only", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.watch_only:
        asyncio.run(watch_only(args.watch_only, args.watchers))
        return
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(args.root.resolve(), Path(tmp), args.watchers)
        try:
            result = asyncio.run(run(url, args.watchers, args.writes))
        finally:
            proc.terminate()
            proc.wait(30)
    print(json.dumps({"root": str(args.root), **result}, indent=2))


if __name__ == "__main__":
    main()
