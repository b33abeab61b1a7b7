"""The agent benchmark's results (turns, calls, streaming times per variant) and its report:
percentiles, the machine it ran on, and the tables."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_servers import STREAM_PIECES

STEPS = ("history_ms", "memory_ms", "knowledge_ms", "llm_ms", "tools_ms", "persistence_ms", "total_ms")


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
