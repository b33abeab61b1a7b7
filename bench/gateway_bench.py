"""Gateway overhead: what the HTTP gateway adds to the gRPC call it makes, measured against that same
gRPC call made directly, in the same run on the same machine.

Processes, like a deployment (nothing shares a GIL with the code it measures):

- a zero-latency OpenAI-compatible LLM server (``tests/llm_server.py`` with a fallback reply to every
  request), started by this script with ``--serve-llm``;
- ``sessionkit serve`` with every service (SQLite and embedded Chroma in a temp data directory; no
  gateway in it);
- ``sessionkit serve --service gateway --address ...``: the gateway alone, in front of those services
  (rate limit off, auth off on loopback);
- this process, measuring in interleaved rounds (machine noise hits both sides alike):
  1. ``POST /agent`` (the documented body, httpx with keep-alive) against the ``Chat`` RPC the gateway
     makes for it, called directly with the SDK's AgentClient. Each turn's own time in the agent
     service (its ``metadata.latency.total_ms``) is subtracted from what the client saw, on both
     sides; overhead = the difference of the p50s of what remains (the gateway's work and its extra
     hop), so the turn's own variance (LLM call, SQLite) does not drown it. Turns run with
     ``options={"use_memory": false, "use_knowledge": false}`` on both sides (the gateway's work does
     not depend on the options).
  2. ``GET /v1/sessions/{id}/state`` against ``GetState`` over gRPC (StateClient): the ratio of p50s.
- a load generator in a second process (``--load``): 16 concurrent httpx.AsyncClient tasks for a fixed
  time against ``POST /agent`` and ``GET .../state``; requests/s. It shares the 2 cores with the
  gateway and the services, so it is a floor, not the gateway's ceiling.

``--quick``: fewer rounds and shorter load runs (under two minutes). Full:
``.venv/bin/python bench/gateway_bench.py`` (--rounds 400, --load-seconds 15).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "sdk"), str(ROOT)]

from tests.servers import wait_serving  # noqa: E402

MODEL = "bench-model"
AGENT = "Assistant"  # the gateway's default agent
REPLY = "Sure. Here is a short answer."
LIGHT = {"use_memory": False, "use_knowledge": False}
CONCURRENCY = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


from report import Recorder  # noqa: E402


def machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"load average {load} at {time.strftime('%Y-%m-%d %H:%M')}"
    )


# -- child processes ----------------------------------------------------------------------------------


def serve_llm() -> None:
    """``--serve-llm``: answer every chat completion at once; print the port; run until stdin closes."""
    from tests.llm_server import LLMServer, Received, Reply

    server = LLMServer(model=MODEL)

    def fallback(request: Received) -> Reply:
        del server.requests[:-1]  # keep the record from growing over thousands of requests
        return Reply(content=REPLY)

    server.fallback = fallback
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(server.port, flush=True)
    try:
        sys.stdin.read()
    finally:
        server.stop()


def run_load(base: str, kind: str, seconds: float, concurrency: int) -> None:
    """``--load``: ``concurrency`` clients sending requests back to back for ``seconds``; prints JSON."""
    import httpx

    async def main() -> dict[str, Any]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
            done = 0
            errors = 0
            latencies: list[float] = []
            stop_at = time.perf_counter() + seconds

            async def worker(n: int) -> None:
                nonlocal done, errors
                session = f"load-{kind}-{n}"
                if kind == "state":
                    body = {"session_id": session, "state": {"plan": "pro", "seats": 12}}
                    created = await client.post("/v1/sessions?user_id=bench", json=body)
                    created.raise_for_status()
                while time.perf_counter() < stop_at:
                    started = time.perf_counter()
                    if kind == "agent":
                        body = {
                            "messages": [{"role": "user", "content": f"hello {done}"}],
                            "context": {"session_id": session, "user_id": "bench"},
                            "options": LIGHT,
                        }
                        reply = await client.post("/agent", json=body)
                    else:
                        reply = await client.get(f"/v1/sessions/{session}/state", params={"user_id": "bench"})
                    latencies.append(time.perf_counter() - started)
                    if reply.status_code == 200:
                        done += 1
                    else:
                        errors += 1

            began = time.perf_counter()
            await asyncio.gather(*(worker(n) for n in range(concurrency)))
            elapsed = time.perf_counter() - began
        return {
            "rps": done / elapsed,
            "errors": errors,
            "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
            "p99_ms": percentile(latencies, 0.99) * 1000 if latencies else float("nan"),
        }

    print(json.dumps(asyncio.run(main())), flush=True)


class Stack:
    """The LLM, the services and the gateway, each in its own process."""

    def __init__(self, data_dir: Path) -> None:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("SESSIONKIT_", "OPENAI_"))},
            "PYTHONPATH": f"{ROOT / 'sdk'}{os.pathsep}{ROOT}",
            "HF_HUB_OFFLINE": "1",
            "SESSIONKIT_LOG_LEVEL": "WARNING",
        }
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []
        llm = self._spawn([sys.executable, str(Path(__file__).resolve()), "--serve-llm"], stdout=True)
        assert llm.stdout is not None
        llm_url = f"http://127.0.0.1:{int(llm.stdout.readline())}/v1"
        self.grpc_port = free_port()
        self._spawn(
            [*self._cli(), "serve", "--port", str(self.grpc_port), "--http-port", "0"],
            SESSIONKIT_DATA_DIR=str(data_dir),
            SESSIONKIT_LLM_BASE_URL=llm_url,
            SESSIONKIT_LLM_MODEL=MODEL,
            SESSIONKIT_LLM_API_KEY="sk-bench",
        )
        wait_serving(self.address, timeout=120)
        self.http_port = free_port()
        self._spawn(
            [*self._cli(), "serve", "--service", "gateway", "--address", self.address, *self._port()],
            SESSIONKIT_RATE_LIMIT_PER_SECOND="0",
        )
        self._wait_http()

    def _port(self) -> list[str]:
        return ["--http-port", str(self.http_port)]

    @staticmethod
    def _cli() -> list[str]:
        return [sys.executable, "-m", "sessionkit.cli"]

    def _spawn(self, argv: list[str], stdout: bool = False, **extra: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            argv,
            env={**self.env, **extra},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def _wait_http(self) -> None:
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the gateway at {self.url} did not become healthy")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


# -- the measurements ---------------------------------------------------------------------------------


async def measure(stack: Stack, rounds: int, warmup: int) -> dict[str, list[float]]:
    import httpx

    from sessionkit.agent_client import AgentClient
    from sessionkit.config import ClientSettings
    from sessionkit.retry import RetryPolicy
    from sessionkit.state_client import SessionRef, StateClient
    from sessionkit.transport import Transport

    settings = ClientSettings(address=stack.address)
    transport = Transport(settings, stack.address, Path("."), RetryPolicy())
    agents = AgentClient(transport)
    state = StateClient(transport)
    http = httpx.AsyncClient(base_url=stack.url, timeout=60)
    via_gateway = SessionRef("default", "bench", "via-gateway")
    direct = SessionRef("default", "bench", "direct")
    for ref in (via_gateway, direct):
        # The first turn creates the session and the default agent (what the gateway does on first use).
        body = {"query": "hello", "session_id": ref.session_id, "user_id": ref.user_id, "options": LIGHT}
        (await http.post("/agent", json=body)).raise_for_status()
        await state.save_state(ref, {"plan": "pro", "seats": 12, "tags": ["a", "b"]})

    async def http_agent() -> float:
        body = {
            "messages": [{"role": "user", "content": "hello"}],
            "context": {"session_id": via_gateway.session_id, "user_id": via_gateway.user_id},
            "options": LIGHT,
        }
        reply = await http.post("/agent", json=body)
        assert reply.status_code == 200, reply.text
        return server_ms(reply.json()["metadata"])

    async def grpc_agent() -> float:
        return server_ms((await agents.chat(direct, AGENT, "hello", options=LIGHT))["metadata"])

    async def http_state() -> float:
        reply = await http.get(f"/v1/sessions/{via_gateway.session_id}/state", params={"user_id": "bench"})
        assert reply.status_code == 200, reply.text
        return 0.0

    async def grpc_state() -> float:
        await state.get_state(direct)
        return 0.0

    operations: dict[str, Callable[[], Awaitable[float]]] = {
        "POST /agent (gateway)": http_agent,
        "Chat (gRPC direct)": grpc_agent,
        "GET state (gateway)": http_state,
        "GetState (gRPC direct)": grpc_state,
    }
    samples: dict[str, list[float]] = {name: [] for name in operations}
    #: Agent turns: the client's time minus the agent service's own time for the turn (its
    #: latency.total_ms), so the turn's variance (LLM, SQLite) cancels out of the comparison.
    outside: dict[str, list[float]] = {name: [] for name in operations if "gent" in name or "Chat" in name}
    for n in range(warmup + rounds):
        # Interleaved, in an order that alternates, so neither side always runs first.
        names = list(operations) if n % 2 == 0 else list(reversed(operations))
        for name in names:
            started = time.perf_counter()
            inside = await operations[name]()
            elapsed = (time.perf_counter() - started) * 1000
            if n >= warmup:
                samples[name].append(elapsed)
                if name in outside:
                    outside[name].append(elapsed - inside)
    await http.aclose()
    from sessionkit.transport import close_channels

    await close_channels()
    samples.update({f"{name}, outside the agent service": values for name, values in outside.items()})
    return samples


def server_ms(metadata: dict[str, Any]) -> float:
    latency = metadata.get("latency") or {}
    return float(latency.get("total_ms") or latency.get("totalMs") or 0.0)


def load_args(kind: str, seconds: float) -> list[str]:
    return ["--kind", kind, "--seconds", str(seconds), "--concurrency", str(CONCURRENCY)]


def load(stack: Stack, kind: str, seconds: float) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--load", stack.url, *load_args(kind, seconds)],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def record(samples: dict[str, list[float]], quick: bool) -> None:
    """The figures for REPORT.md (bench/report.py): each gateway path against its direct gRPC call."""
    baselines = {
        "GET state (gateway)": "GetState (gRPC direct)",
        "POST /agent (gateway), outside the agent service": "Chat (gRPC direct), outside the agent service",
    }
    rec = Recorder("gateway_bench", "quick" if quick else "")
    for name in sorted(samples, key=lambda n: n in baselines):  # the baselines first
        base = baselines.get(name)
        rec.samples(name, samples[name], baseline=base if base in samples else None)
    rec.save()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--load-seconds", type=float, default=None)
    parser.add_argument("--serve-llm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--load", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="agent", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_llm:
        serve_llm()
        return
    if args.load:
        run_load(args.load, args.kind, args.seconds, args.concurrency)
        return
    rounds = args.rounds or (100 if args.quick else 400)
    load_seconds = args.load_seconds or (5.0 if args.quick else 15.0)
    print(f"# gateway bench: {machine()}; {rounds} rounds per operation (interleaved)")
    with tempfile.TemporaryDirectory(prefix="sessionkit-gateway-bench-") as tmp:
        stack = Stack(Path(tmp) / "data")
        try:
            samples = asyncio.run(measure(stack, rounds, warmup=max(10, rounds // 10)))
            print("\n| operation | p50 ms | p90 ms | p99 ms |\n|---|---|---|---|")
            for name, values in samples.items():
                print(
                    f"| {name} | {statistics.median(values):.2f} | {percentile(values, 0.9):.2f} "
                    f"| {percentile(values, 0.99):.2f} |"
                )
            agent_overhead = statistics.median(
                samples["POST /agent (gateway), outside the agent service"]
            ) - statistics.median(samples["Chat (gRPC direct), outside the agent service"])
            state_overhead = statistics.median(samples["GET state (gateway)"]) - statistics.median(
                samples["GetState (gRPC direct)"]
            )
            ratio = statistics.median(samples["GET state (gateway)"]) / statistics.median(
                samples["GetState (gRPC direct)"]
            )
            print(
                "\nPOST /agent overhead (p50 of the time outside the agent service, gateway - direct Chat): "
                f"{agent_overhead:.2f} ms "
                f"(target < 5 ms: {'met' if agent_overhead < 5 else 'NOT met'})"
            )
            print(f"REST get_state / gRPC GetState p50: {ratio:.2f}x (+{state_overhead:.2f} ms)")
            record(samples, args.quick)
            print(f"\nLoad: {CONCURRENCY} concurrent clients in a second process, {load_seconds:g} s each")
            for kind in ("agent", "state"):
                result = load(stack, kind, load_seconds)
                label = "POST /agent" if kind == "agent" else "GET /v1/sessions/{id}/state"
                print(
                    f"- {label}: {result['rps']:.0f} requests/s, p50 {result['p50_ms']:.1f} ms, "
                    f"p99 {result['p99_ms']:.1f} ms, {result['errors']} errors"
                )
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
