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
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "sdk"), str(ROOT)]

from agent_report import STEPS, VARIANTS, Results, Turn, machine, p50, report  # noqa: E402
from agent_servers import MODEL, REPLY, Servers, postgres_reachable, serve_llm, start_servers  # noqa: E402
from report import Recorder  # noqa: E402

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
AGENT = "Bench Assistant"

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


def record(res: Results, url: str, args: argparse.Namespace) -> None:
    """The main figures for REPORT.md (bench/report.py): the turn against the LLM called directly."""
    variant = ("postgres" if url else "sqlite") + ("-quick" if args.quick else "")
    rec = Recorder("agent_bench", variant, config={"turns": args.turns, "rounds": args.rounds})
    direct = "LLM called directly (openai client)"
    rec.samples(direct, res.calls[direct])
    for name, turns in res.turns.items():
        rec.samples(f"{name}: SDK turn", [t.sdk_ms for t in turns], baseline=direct)
        rec.samples(f"{name}: overhead (SDK turn - llm_ms)", [t.overhead_ms for t in turns],
                    note=f"target p50 < {args.target:g} ms")  # fmt: skip
    for name, values in res.ttft.items():
        rec.samples(f"first streamed piece: {name}", values)
    rec.save()


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
        res = run_store(args, url)
        report(res, args)
        record(res, url, args)
    print(f"\nmachine at the end: {machine()}")


if __name__ == "__main__":
    main()
