"""Agent turn latency: where a turn's time goes outside the LLM, against the LLM's own time measured
in the same run on the same machine.

Three processes, like a deployment (nothing shares a GIL with the code it measures):

- a zero-latency OpenAI-compatible LLM server (``tests/llm_server.py``, the scripted server with a
  fallback reply to every request), started by this script with ``--serve-llm``;
- ``sessionkit serve`` with every service (state, memory, knowledge, agent) on a temp data directory
  (SQLite and embedded Chroma, or ``--database-url`` for PostgreSQL), its agent pointed at that LLM;
- this process: the SDK as a user writes it (``Session(...).Agent(name=...).chat(...)``), and the
  baselines: the same LLM server called directly with the ``openai`` client (what the LLM itself costs
  over loopback HTTP), a ``get_state`` (one RPC round trip to the same server), ``search_memory`` and
  ``search_knowledge`` as a client calls them, and the embedding model alone on one short text
  (``LocalEmbedder``, the class the server uses).

Rounds interleave every operation so machine noise hits them alike; ratios and differences within one
run are the result, not absolute times.

1. Unary turns: ``agent.chat(message)``; ``agent.last_metadata["latency"]`` gives the service's time
   per step (history, memory, knowledge, llm, tools, persistence, total). Overhead = the turn as the
   SDK sees it minus the LLM's time (``llm_ms``, and as a cross-check minus the direct call's p50 of
   the same round). The same agent also runs turns with ``use_memory=False`` and/or
   ``use_knowledge=False``: the differences say what each part costs on the turn's critical path.
2. Streaming: time to the first text piece through ``agent.stream(message)`` against the LLM server's
   own time to first piece with the ``openai`` client streaming (a reply whose pieces are spaced by
   ``--piece-delay``), and the gaps between pieces at the SDK (no buffering: they stay at the delay).

``--quick`` (``make bench``, under two minutes on a quiet machine): fewer turns, SQLite only.
Full: ``.venv/bin/python bench/agent_bench.py`` (200 turns per variant after warm-up; SQLite, then
PostgreSQL at the default URL when reachable).
``--database-url URL`` runs only that store.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "sdk"), str(ROOT)]

from tests.servers import wait_serving  # noqa: E402

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
MODEL = "bench-model"
AGENT = "Bench Assistant"
#: The zero-latency reply (unary) and the streamed one (8 pieces, spaced by --piece-delay).
REPLY = "Sure. Here is a short answer about that, based on what you told me before."
STREAM_PIECES = ["Here", " is", " a", " streamed", " answer", " in", " eight", " pieces."]

STEPS = ("history_ms", "memory_ms", "knowledge_ms", "llm_ms", "tools_ms", "persistence_ms", "total_ms")

# -- helpers ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


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


def postgres_reachable(url: str) -> bool:
    rest = url.split("@", 1)[-1].split("/", 1)[0]
    host, _, port = rest.partition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port or 5432)), timeout=1):
            return True
    except OSError:
        return False


# Distinct, varied messages (a real conversation; the short-term memory of each exchange is not a
# near-duplicate of the previous one).
SUBJECTS = [
    "my order",
    "the invoice from March",
    "our team's onboarding",
    "the refund policy",
    "a delayed shipment",
    "my password reset",
    "the API rate limits",
    "the Berlin office",
    "my dentist appointment",
    "the quarterly report",
    "a broken laptop screen",
    "the hiking trip to Snowdon",
    "the vegetarian recipe",
    "my flight to Lisbon",
    "the database migration",
    "the new pricing plan",
]
ASKS = [
    "Can you remind me what we decided about {s}?",
    "What should I do next about {s}?",
    "Summarize what you know about {s} in two sentences.",
    "Is there anything in the handbook about {s}?",
    "I changed my mind about {s}; what changes now?",
    "Who should I contact regarding {s}?",
    "How long does {s} usually take?",
    "Write a short note to my manager about {s}.",
]


def messages(seed: int) -> Iterator[str]:
    rng = random.Random(seed)
    n = 0
    while True:
        n += 1
        yield f"{rng.choice(ASKS).format(s=rng.choice(SUBJECTS))} (#{n})"


LONG_MEMORIES = [
    f"The user {fact}"
    for fact in (
        "prefers answers in short bullet points",
        "works at a logistics company in Rotterdam",
        "is allergic to peanuts",
        "has a dog called Biscuit",
        "ordered a standing desk in March (order #4411)",
        "is learning Portuguese for a move to Lisbon",
        "uses the Pro plan with 12 seats",
        "asked for invoices to be sent to finance@example.com",
        "runs the quarterly report every first Monday",
        "had a laptop screen replaced under warranty",
        "likes hiking in Wales",
        "is vegetarian",
        "manages a team of five engineers",
        "migrated their database to PostgreSQL last year",
        "prefers to be contacted by email, not phone",
        "flies out of Amsterdam Schiphol",
        "reset their password twice in January",
        "was promised a call back about shipment 7781",
        "wants the API rate limit raised to 200 requests per minute",
        "has a dentist appointment every six months",
    )
]


def handbook() -> str:
    """A knowledge source of a few dozen chunks."""
    paragraphs = []
    for n, subject in enumerate(SUBJECTS * 3):
        paragraphs.append(
            f"Section {n + 1}: {subject}. Customers asking about {subject} should first check their "
            f"account page. Requests about {subject} are answered within {n % 5 + 1} working days; "
            f"escalations go to team {chr(65 + n % 6)}. Keep a record of every message about {subject} "
            "in the ticket, and confirm the next step with the customer in writing."
        )
    return "\n\n".join(paragraphs)


# -- the LLM server process ---------------------------------------------------------------------------


def serve_llm(piece_delay: float) -> None:
    """``--serve-llm``: the scripted server answering every request with the fallback; prints its port
    and runs until stdin closes (the benchmark ends) or SIGTERM."""
    from tests.llm_server import LLMServer, Received, Reply

    server = LLMServer(model=MODEL)

    def fallback(request: Received) -> Reply:
        # Only the last request is needed (the fallback reads it): keep the record from growing.
        del server.requests[:-1]
        if isinstance(request.body, dict) and request.body.get("stream"):
            return Reply(content="".join(STREAM_PIECES), chunks=STREAM_PIECES, piece_delay=piece_delay)
        return Reply(content=REPLY)

    server.fallback = fallback
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(server.port, flush=True)
    try:
        sys.stdin.read()
    finally:
        server.stop()


@dataclass
class Servers:
    llm: subprocess.Popen[bytes]
    sk: subprocess.Popen[bytes]
    llm_url: str
    address: str

    def stop(self) -> None:
        for proc in (self.sk, self.llm):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def start_servers(
    data_dir: Path, database_url: str, piece_delay: float, extra_env: dict[str, str]
) -> Servers:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'sdk'}{os.pathsep}{ROOT}", "HF_HUB_OFFLINE": "1"}
    llm = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve-llm", "--piece-delay", str(piece_delay)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert llm.stdout is not None
    llm_url = f"http://127.0.0.1:{int(llm.stdout.readline())}/v1"
    port = free_port()
    sk = subprocess.Popen(
        [sys.executable, "-m", "sessionkit.cli", "serve", "--port", str(port), "--http-port", "0"],
        env={
            **{k: v for k, v in env.items() if not k.startswith(("SESSIONKIT_", "OPENAI_"))},
            "SESSIONKIT_DATA_DIR": str(data_dir),
            "SESSIONKIT_DATABASE_URL": database_url,
            "SESSIONKIT_LOG_LEVEL": "WARNING",
            "SESSIONKIT_LLM_BASE_URL": llm_url,
            "SESSIONKIT_LLM_MODEL": MODEL,
            "SESSIONKIT_LLM_API_KEY": "sk-bench",
            **extra_env,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    servers = Servers(llm, sk, llm_url, f"127.0.0.1:{port}")
    try:
        wait_serving(servers.address, 180)
    except BaseException:
        servers.stop()
        raise
    return servers


# -- measurements -------------------------------------------------------------------------------------


@dataclass
class Turn:
    sdk_ms: float
    steps: dict[str, float]
    direct_ms: float  # p50 of the direct LLM calls of the same round

    @property
    def search_ms(self) -> float:
        """Memory and knowledge run concurrently: the longer one is on the critical path."""
        return max(self.steps["memory_ms"], self.steps["knowledge_ms"])

    @property
    def in_turn_rest_ms(self) -> float:
        s = self.steps
        parts = s["history_ms"] + self.search_ms + s["llm_ms"] + s["tools_ms"] + s["persistence_ms"]
        return s["total_ms"] - parts

    @property
    def outside_ms(self) -> float:
        return self.sdk_ms - self.steps["total_ms"]

    @property
    def overhead_ms(self) -> float:
        return self.sdk_ms - self.steps["llm_ms"]

    @property
    def overhead_direct_ms(self) -> float:
        return self.sdk_ms - self.direct_ms


@dataclass
class Results:
    turns: dict[str, list[Turn]] = field(default_factory=dict)
    calls: dict[str, list[float]] = field(default_factory=dict)
    ttft: dict[str, list[float]] = field(default_factory=dict)
    stream_total: dict[str, list[float]] = field(default_factory=dict)
    gaps: dict[str, list[float]] = field(default_factory=dict)
    stream_llm_ms: list[float] = field(default_factory=list)


VARIANTS: dict[str, dict[str, Any]] = {
    "turn (memory + knowledge)": {},
    "turn, use_knowledge=False": {"use_knowledge": False},
    "turn, use_memory=False": {"use_memory": False},
    "turn, neither": {"use_memory": False, "use_knowledge": False},
}


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def run_store(args: argparse.Namespace, database_url: str) -> Results:
    import openai

    from sessionkit import Session

    label = database_url or "SQLite (embedded default)"
    print(f"\n=== store: {label} ===", flush=True)
    with tempfile.TemporaryDirectory(prefix="agent-bench-") as tmp:
        begin = time.perf_counter()
        servers = start_servers(Path(tmp) / "data", database_url, args.piece_delay, args.env)
        print(f"servers up in {time.perf_counter() - begin:.1f} s", flush=True)
        try:
            return measure(args, servers, Session, openai)
        finally:
            servers.stop()


def measure(args: argparse.Namespace, servers: Servers, session_class: Any, openai: Any) -> Results:
    from sessionkit_server.retrieval.embeddings import LocalEmbedder

    tag = f"{os.getpid()}-{int(time.time())}"
    session = session_class(f"bench-{tag}", f"user-{tag}", address=servers.address, app_name="agent-bench")
    setup = time.perf_counter()
    for text in LONG_MEMORIES:
        session.store_long_memory(text, quality_score=0.9)
    session.add_knowledge(handbook(), name="handbook.md")
    session.set_state("profile", {"name": "Ada", "plan": "pro"})
    agent = session.Agent(
        name=AGENT, role="Customer Support Specialist", instructions="Be brief and use what you know."
    )
    print(f"setup (memories, knowledge, agent) {time.perf_counter() - setup:.1f} s", flush=True)

    llm = openai.OpenAI(base_url=servers.llm_url, api_key="sk-bench", max_retries=0, timeout=30)
    # The direct call sends a prompt shaped like a turn's: a system prompt with context, 20 history
    # messages and the new message (the server's time does not depend on its size here).
    direct_messages: list[dict[str, str]] = [
        {"role": "system", "content": "You are Bench Assistant. " + " ".join(LONG_MEMORIES[:3]) * 4}
    ]
    for n in range(10):
        direct_messages += [
            {"role": "user", "content": f"question {n}"},
            {"role": "assistant", "content": REPLY},
        ]
    direct_messages.append({"role": "user", "content": "Can you remind me what we decided?"})

    embedder = LocalEmbedder()
    if "OMP_NUM_THREADS" in args.env:  # the baseline model runs with the server's thread count
        import torch

        torch.set_num_threads(int(args.env["OMP_NUM_THREADS"]))
    loop = asyncio.new_event_loop()
    texts = messages(1)
    res = Results()

    def direct() -> None:
        llm.chat.completions.create(model=MODEL, messages=direct_messages)  # type: ignore[arg-type]

    ops: dict[str, Callable[[], object]] = {
        "LLM called directly (openai client)": direct,
        "get_state (one RPC)": lambda: session.get_state("profile"),
        "search_memory (as a client)": lambda: session.search_memory(next(texts), "all", 3),
        "search_knowledge (as a client)": lambda: session.search_knowledge(next(texts), 5),
        "embedding model alone (1 text)": lambda: loop.run_until_complete(embedder.embed([next(texts)])),
    }

    def turn(options: dict[str, Any], direct_ms: float) -> Turn:
        message = next(texts)
        start = time.perf_counter()
        agent.chat(message, **options)
        sdk_ms = (time.perf_counter() - start) * 1e3
        lat = agent.last_metadata["latency"]
        return Turn(sdk_ms, {k: float(lat.get(k, 0.0)) for k in STEPS}, direct_ms)

    # Warm-up: connections, the model in both processes, caches, the agent's history up to its window.
    for fn in ops.values():
        for _ in range(5):
            fn()
    for options in VARIANTS.values():
        for _ in range(args.warmup):
            turn(options, 0.0)

    rounds = args.rounds
    per_round = max(1, args.turns // rounds)
    res.calls = {name: [] for name in ops}
    res.turns = {name: [] for name in VARIANTS}
    t_unary = time.perf_counter()
    for r in range(rounds):
        for name, fn in ops.items():
            res.calls[name] += [timed(fn) for _ in range(per_round)]
        round_direct = p50(res.calls["LLM called directly (openai client)"][-per_round:])
        for name, options in VARIANTS.items():
            res.turns[name] += [turn(options, round_direct) for _ in range(per_round)]
        print(f"  round {r + 1}/{rounds} done ({time.perf_counter() - t_unary:.0f} s)", flush=True)

    # Streaming: first piece through the SDK vs the LLM server's own first piece.
    res.ttft = {"LLM streamed directly (openai client)": [], "agent.stream (SDK)": []}
    res.stream_total = {k: [] for k in res.ttft}
    res.gaps = {k: [] for k in res.ttft}

    def direct_stream() -> tuple[float, float, list[float]]:
        start = time.perf_counter()
        first = 0.0
        arrivals: list[float] = []
        stream = llm.chat.completions.create(
            model=MODEL,
            messages=direct_messages,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.perf_counter())
        first = arrivals[0] - start
        return first * 1e3, (time.perf_counter() - start) * 1e3, arrivals

    def sdk_stream() -> tuple[float, float, list[float]]:
        start = time.perf_counter()
        arrivals: list[float] = []
        for _piece in agent.stream(next(texts)):
            arrivals.append(time.perf_counter())
        res.stream_llm_ms.append(float(agent.last_metadata["latency"]["llm_ms"]))
        return (arrivals[0] - start) * 1e3, (time.perf_counter() - start) * 1e3, arrivals

    streams = {"LLM streamed directly (openai client)": direct_stream, "agent.stream (SDK)": sdk_stream}
    for fn in streams.values():
        for _ in range(3):
            fn()
    res.stream_llm_ms.clear()
    per_round_stream = max(1, args.stream_turns // rounds)
    for _ in range(rounds):
        for name, sfn in streams.items():
            for _ in range(per_round_stream):
                first, total, arrivals = sfn()
                res.ttft[name].append(first)
                res.stream_total[name].append(total)
                res.gaps[name] += [(b - a) * 1e3 for a, b in itertools.pairwise(arrivals)]
    loop.close()
    llm.close()
    session.close()
    return res


# -- the report ---------------------------------------------------------------------------------------


def row(name: str, values: list[float], base: float | None = None, note: str = "") -> str:
    ratio = f"{p50(values) / base:8.2f}x" if base else " " * 9
    return f"{name:44} {p50(values):9.2f} {percentile(values, 0.99):9.2f} {ratio} {note}"


def report(res: Results, args: argparse.Namespace) -> None:
    header = f"{'':44} {'p50 ms':>9} {'p99 ms':>9} {'':>9}"
    direct = res.calls["LLM called directly (openai client)"]
    base = p50(direct)
    print(f"\nBaselines, interleaved with the turns ({len(direct)} calls each)")
    print(f"{'':44} {'p50 ms':>9} {'p99 ms':>9} {'/ direct':>9}")
    for name, values in res.calls.items():
        print(row(name, values, base if name.startswith("LLM") else None))

    full = res.turns["turn (memory + knowledge)"]
    print(f"\nA turn, agent.chat() with memory and knowledge ({len(full)} turns after warm-up)")
    print(header)
    lines: list[tuple[str, list[float]]] = [
        ("turn as the SDK sees it", [t.sdk_ms for t in full]),
        ("  service turn (total_ms)", [t.steps["total_ms"] for t in full]),
        ("    history (read log, append user message)", [t.steps["history_ms"] for t in full]),
        ("    memory search", [t.steps["memory_ms"] for t in full]),
        ("    knowledge search (concurrent with memory)", [t.steps["knowledge_ms"] for t in full]),
        ("    = search on the critical path (max)", [t.search_ms for t in full]),
        ("    LLM (llm_ms)", [t.steps["llm_ms"] for t in full]),
        ("    tools", [t.steps["tools_ms"] for t in full]),
        ("    persistence (append reply, memory write)", [t.steps["persistence_ms"] for t in full]),
        ("    rest of the turn (prompt, model resolve)", [t.in_turn_rest_ms for t in full]),
        ("  outside the turn (SDK, gRPC, lookup, lease)", [t.outside_ms for t in full]),
        ("OVERHEAD = SDK turn - llm_ms", [t.overhead_ms for t in full]),
        ("overhead vs direct LLM = SDK turn - direct p50", [t.overhead_direct_ms for t in full]),
    ]
    for name, values in lines:
        print(row(name, values))
    overhead = p50([t.overhead_ms for t in full])
    verdict = "met" if overhead < args.target else "MISSED"
    print(f"target: overhead p50 < {args.target:.0f} ms: {verdict} ({overhead:.1f} ms)")

    print("\nVariants of the same agent, interleaved (p50 ms; the difference to the full turn is what the")
    print("left-out part costs on the critical path)")
    print(
        f"{'variant':30} {'SDK turn':>9} {'p99':>8} {'overhead':>9} {'p99':>8} {'history':>8} "
        f"{'memory':>7} {'knowl.':>7} {'LLM':>6} {'persist':>8} {'saves':>7}"
    )
    full_overhead = p50([t.overhead_ms for t in full])
    for name, turns in res.turns.items():
        sdk_ms = [t.sdk_ms for t in turns]
        ov = [t.overhead_ms for t in turns]

        def step(key: str, turns: list[Turn] = turns) -> float:
            return p50([t.steps[key] for t in turns])

        print(
            f"{name:30} {p50(sdk_ms):9.2f} {percentile(sdk_ms, 0.99):8.2f} {p50(ov):9.2f} "
            f"{percentile(ov, 0.99):8.2f} {step('history_ms'):8.2f} {step('memory_ms'):7.2f} "
            f"{step('knowledge_ms'):7.2f} {step('llm_ms'):6.2f} {step('persistence_ms'):8.2f} "
            f"{full_overhead - p50(ov):7.2f}"
        )

    print(f"\nStreaming, reply of {len(STREAM_PIECES)} pieces {args.piece_delay * 1e3:.0f} ms apart")
    print(f"{'':44} {'TTFT p50':>9} {'p99':>9} {'total p50':>10} {'gap p50':>8} {'gap p99':>8}")
    for name, values in res.ttft.items():
        gaps = res.gaps[name]
        print(
            f"{name:44} {p50(values):9.2f} {percentile(values, 0.99):9.2f} "
            f"{p50(res.stream_total[name]):10.2f} {p50(gaps):8.2f} {percentile(gaps, 0.99):8.2f}"
        )
    sdk, own = res.ttft["agent.stream (SDK)"], res.ttft["LLM streamed directly (openai client)"]
    print(
        f"first piece through the SDK - the LLM's own: {p50(sdk) - p50(own):.2f} ms at p50 "
        f"({p50(sdk) / p50(own):.2f}x); streamed turns' llm_ms p50 {p50(res.stream_llm_ms):.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer turns (make bench, under two minutes)")
    parser.add_argument(
        "--turns", type=int, default=0, help="measured turns per variant (default 200; quick 40)"
    )
    parser.add_argument(
        "--warmup", type=int, default=0, help="warm-up turns per variant (default 20; quick 8)"
    )
    parser.add_argument("--stream-turns", type=int, default=0, help="streamed turns (default 100; quick 20)")
    parser.add_argument("--rounds", type=int, default=0, help="interleaved rounds (default 10; quick 4)")
    parser.add_argument("--piece-delay", type=float, default=0.02, help="seconds between streamed pieces")
    parser.add_argument("--target", type=float, default=20.0, help="overhead target, p50 ms")
    parser.add_argument(
        "--database-url",
        default=None,
        help=f"run only this store (default: SQLite, then {DEFAULT_PG} if reachable; '' = SQLite only)",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment of the sessionkit server (repeatable), e.g. OMP_NUM_THREADS=1 (also applied to "
        "this process's baseline model)",
    )
    parser.add_argument("--serve-llm", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_llm:
        serve_llm(args.piece_delay)
        return
    quick = args.quick
    args.env = dict(item.split("=", 1) for item in args.server_env)
    args.turns = args.turns or (24 if quick else 200)
    args.warmup = args.warmup or (4 if quick else 20)
    args.stream_turns = args.stream_turns or (12 if quick else 100)
    args.rounds = args.rounds or (3 if quick else 10)
    if args.database_url is None and quick:
        stores = [""]
    elif args.database_url is None:
        stores = [""] + ([DEFAULT_PG] if postgres_reachable(DEFAULT_PG) else [])
        if len(stores) == 1:
            print(f"PostgreSQL at {DEFAULT_PG} not reachable: SQLite only")
    else:
        stores = [args.database_url]
    print(f"machine: {machine()}")
    print(
        f"{'quick' if quick else 'full'} run: {args.turns} turns per variant after {args.warmup} warm-up, "
        f"{args.stream_turns} streamed, {args.rounds} interleaved rounds"
        + (f"; server environment {args.env}" if args.env else "")
    )
    for url in stores:
        report(run_store(args, url), args)
    print(f"\nmachine at the end: {machine()}")


if __name__ == "__main__":
    main()
