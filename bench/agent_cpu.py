"""Where an agent turn's CPU goes in the server, by thread: a load-robust complement to
bench/agent_bench.py (wall times on a shared machine swing with the other processes; the CPU a turn
costs the server swings much less).

Starts the same servers as agent_bench.py (a zero-latency LLM and ``sessionkit serve`` with every
service), stores the same memories and handbook, runs ``--warmup`` turns, then ``--turns`` turns back to
back, and prints the server's CPU per turn by thread (from /proc: the event loop "MAIN", Python's worker
threads "python" (the embedding model, SQLite, Chroma's Python side), Chroma's Rust threads, gRPC's
own), the LLM server's and this process's, and the turn's p50 figures. Linux only.

    .venv/bin/python bench/agent_cpu.py [--turns 60] [--database-url URL] [--no-memory] [--no-knowledge]

Run two checkouts one after the other (alternating, twice or more) to compare a change under the same
load: docs/BENCHMARKS.md "Issue 15: in-process upstream calls".
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "sdk"), str(ROOT)]

from agent_bench import AGENT, LONG_MEMORIES, handbook, messages  # noqa: E402
from agent_servers import start_servers  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each live thread of ``pid``, by thread id: (name, seconds)."""
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # ended meanwhile
        name = "MAIN" if tid == str(pid) else stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        out[f"{tid}:{name}"] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (default: SQLite)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-knowledge", action="store_true")
    args = parser.parse_args()
    options: dict[str, Any] = {}
    if args.no_memory:
        options["use_memory"] = False
    if args.no_knowledge:
        options["use_knowledge"] = False

    from sessionkit import Session

    with tempfile.TemporaryDirectory(prefix="agent-cpu-") as tmp:
        servers = start_servers(Path(tmp) / "data", args.database_url, 0.02, {})
        try:
            tag = f"{os.getpid()}-{int(time.time())}"
            session = Session(f"cpu-{tag}", f"user-{tag}", address=servers.address, app_name="agent-bench")
            for text in LONG_MEMORIES:
                session.store_long_memory(text, quality_score=0.9)
            session.add_knowledge(handbook(), name="handbook.md")
            agent = session.Agent(
                name=AGENT, role="Customer Support Specialist", instructions="Be brief and use what you know."
            )
            texts = messages(1)
            for _ in range(args.warmup):
                agent.chat(next(texts), **options)
            pid = servers.sk.pid
            before, llm_before, own_before = (
                thread_cpu(pid),
                process_cpu(servers.llm.pid),
                time.process_time(),
            )
            turns: list[tuple[float, dict[str, float]]] = []
            for _ in range(args.turns):
                start = time.perf_counter()
                agent.chat(next(texts), **options)
                turns.append(((time.perf_counter() - start) * 1e3, dict(agent.last_metadata["latency"])))
            after, llm_after, own_after = thread_cpu(pid), process_cpu(servers.llm.pid), time.process_time()
            session.close()
        finally:
            servers.stop()

    by_name: dict[str, float] = {}
    for tid, seconds in after.items():
        name = tid.split(":", 1)[1]
        by_name[name] = by_name.get(name, 0.0) + seconds - before.get(tid, 0.0)
    n = args.turns
    total = sum(by_name.values())
    print(f"load average {os.getloadavg()}; {n} turns, options {options or 'memory + knowledge'}")
    print(f"server CPU per turn: {total * 1e3 / n:.1f} ms")
    for name, seconds in sorted(by_name.items(), key=lambda item: -item[1]):
        if seconds > 0:
            print(f"  {name:<20} {seconds * 1e3 / n:7.1f} ms")
    print(f"LLM server CPU per turn {(llm_after - llm_before) * 1e3 / n:.1f} ms, "
          f"client {(own_after - own_before) * 1e3 / n:.1f} ms")  # fmt: skip
    print(f"SDK turn p50 {statistics.median(t for t, _ in turns):.2f} ms, overhead (SDK turn - llm_ms) p50 "
          f"{statistics.median(t - lat['llm_ms'] for t, lat in turns):.2f} ms")  # fmt: skip
    for step in ("history_ms", "memory_ms", "knowledge_ms", "llm_ms", "persistence_ms", "total_ms"):
        print(f"  {step:<16} p50 {statistics.median(lat.get(step, 0.0) for _, lat in turns):7.2f} ms")


if __name__ == "__main__":
    main()
