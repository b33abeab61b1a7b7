"""The side-by-side scenarios, run the same way against every system (standard library only).

Each system's driver (driver_*.py, run by that system's own virtualenv's python) implements
:class:`Adapter` with the calls a user of that system would make, and calls :func:`main`. The runner
times each call, checks what came back (a read that misses the last write, a lost increment, another
user's memory returned: each counts as a failure) and prints one JSON object on stdout, which the
orchestrator (run.py) collects. Nothing here knows any system.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

SCENARIOS = ("restore_1", "restore_100", "roundtrip", "events", "increments", "memory")

# Memories of two users drawn from the same vocabulary, so a search that ignores the user finds the
# other user's memories too. The owner is marked in the text ("ref A-..."/"ref B-...") only to check.
ITEMS = [
    "green tea", "espresso", "jazz records", "trail running", "sourdough bread", "chess openings",
    "oil painting", "mountain biking", "sushi", "science fiction", "yoga classes", "board games",
    "red wine", "vintage cameras", "salsa dancing", "rock climbing", "indian cuisine", "bird watching",
    "opera", "woodworking", "electric guitars", "french cinema", "tomato gardening", "sailing",
    "dark chocolate", "crossword puzzles", "podcasts", "swimming", "ceramics", "astronomy",
]  # fmt: skip
PLACES = ["Lisbon", "Osaka", "Denver", "Nairobi", "Oslo", "Lima", "Perth", "Quebec", "Tbilisi", "Hanoi"]
USERS = ("alice", "bob")


def memory_texts(user: str, count: int) -> list[str]:
    tag = "A" if user == "alice" else "B"
    rng = random.Random(f"{user}-{count}")
    return [
        f"Enjoys {rng.choice(ITEMS)} when staying in {rng.choice(PLACES)} (ref {tag}-{i})"
        for i in range(count)
    ]


class Adapter:
    """One system's calls. ``session(sid, user)`` returns a handle the other calls take."""

    name = "?"
    notes: list[str]

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.notes = []

    def session(self, sid: str, user: str = "u") -> Any:
        raise NotImplementedError

    def set_state(self, s: Any, key: str, value: Any) -> None:
        raise NotImplementedError

    def get_state(self, s: Any, key: str) -> Any:
        raise NotImplementedError

    def save_state(self, s: Any, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def restore_state(self, s: Any) -> dict[str, Any]:
        raise NotImplementedError

    def add_event(self, s: Any, text: str) -> None:
        raise NotImplementedError

    def read_events(self, s: Any) -> list[str]:
        raise NotImplementedError

    def increment(self, s: Any, key: str) -> int:
        """Add 1 as the system offers it; returns how many conflicts were retried (0 if none)."""
        raise NotImplementedError

    def add_memories(self, s: Any, texts: list[str]) -> None:
        raise NotImplementedError

    def search_memory(self, s: Any, query: str, limit: int) -> list[str]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(*args)
    return (time.perf_counter() - start) * 1000.0, out


def result(samples: list[float], ok: int, failures: int, **extra: Any) -> dict[str, Any]:
    return {"samples_ms": samples, "ok": ok, "failures": failures, **extra}


def roundtrip(a: Adapter, n: int) -> dict[str, Any]:
    s = a.session("roundtrip")
    a.set_state(s, "k", -1)
    samples, failures = [], 0
    for i in range(n):
        ms, got = timed(set_get, a, s, i)
        samples.append(ms)
        failures += got != i
    return result(samples, n - failures, failures, what="set_state(k, i) then get_state(k) == i")


def set_get(a: Adapter, s: Any, i: int) -> Any:
    a.set_state(s, "k", i)
    return a.get_state(s, "k")


def state_of(i: int) -> dict[str, Any]:
    return {"name": f"user {i}", "plan": "pro" if i % 2 else "free", "count": i, "tags": ["a", str(i)]}


def restore(a: Adapter, sessions: int, n: int) -> dict[str, Any]:
    handles = [a.session(f"restore{sessions}-{i}") for i in range(sessions)]
    for i, h in enumerate(handles):
        a.save_state(h, state_of(i))
    rng = random.Random(sessions)
    samples, failures = [], 0
    for _ in range(n):
        i = rng.randrange(sessions)
        ms, got = timed(a.restore_state, handles[i])
        samples.append(ms)
        want = state_of(i)
        failures += {k: got.get(k) for k in want} != want
    return result(samples, n - failures, failures, what=f"restore_state of one of {sessions} sessions")


def events(a: Adapter, count: int, reads: int) -> dict[str, Any]:
    s = a.session("events")
    appends = []
    for i in range(count):
        ms, _ = timed(a.add_event, s, f"event {i}")
        appends.append(ms)
    samples, failures = [], 0
    want = [f"event {i}" for i in range(count)]
    for _ in range(reads):
        ms, got = timed(a.read_events, s)
        samples.append(ms)
        failures += got != want
    return {
        "append": result(appends, count, 0, what="append one event"),
        "read": result(samples, reads - failures, failures, what=f"read all {count} events, in order"),
    }


def increments(args: argparse.Namespace, driver: str) -> dict[str, Any]:
    """4 processes x 200 increments of one key; the final value tells the lost updates."""
    cmd = [sys.executable, driver, *worker_args(args), "--worker", "increment"]
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(args.processes)]
    outs = [p.communicate(timeout=1800)[0] for p in procs]
    wall = time.perf_counter() - start
    workers = [json.loads(o.strip().splitlines()[-1]) for o in outs if o.strip()]
    final = json.loads(
        subprocess.run([*cmd[:-1], "read-counter"], stdout=subprocess.PIPE, text=True, check=True)
        .stdout.strip()
        .splitlines()[-1]
    )["value"]
    expected = args.processes * args.increments
    done = sum(w["done"] for w in workers)
    lost = done - (final if isinstance(final, int) else 0)
    return {
        "samples_ms": [x for w in workers for x in w["samples_ms"]],
        "ok": done,
        "failures": max(0, lost) + sum(w["errors"] for w in workers),
        "lost_updates": lost,
        "errors": sum(w["errors"] for w in workers),
        "conflicts_retried": sum(w["conflicts"] for w in workers),
        "final": final,
        "expected": expected,
        "wall_s": wall,
        "error_kinds": sorted({k for w in workers for k in w["error_kinds"]}),
        "what": f"{args.processes} processes x {args.increments} increments of one key",
    }


def increment_worker(a: Adapter, n: int) -> dict[str, Any]:
    s = a.session("counter")
    samples, errors, conflicts, kinds = [], 0, 0, set()
    for _ in range(n):
        try:
            ms, c = timed(a.increment, s, "n")
            samples.append(ms)
            conflicts += c
        except Exception as e:  # a failed increment is a finding, not a crash of the bench
            errors += 1
            kinds.add(f"{type(e).__name__}: {str(e)[:80]}")
    return {"samples_ms": samples, "done": len(samples), "errors": errors, "conflicts": conflicts,
            "error_kinds": sorted(kinds)}  # fmt: skip


def memory(a: Adapter, size: int, searches: int) -> dict[str, Any]:
    per_user = size // 2
    handles = {u: a.session(f"mem{size}-{u}", u) for u in USERS}
    add_start = time.perf_counter()
    for u in USERS:
        texts = memory_texts(u, per_user)
        for i in range(0, per_user, 500):
            a.add_memories(handles[u], texts[i : i + 500])
    add_s = time.perf_counter() - add_start
    rng = random.Random(size)
    samples, leaks, hits, empty = [], 0, 0, 0
    for _ in range(searches):
        item = rng.choice(ITEMS)
        ms, got = timed(a.search_memory, handles["alice"], item, 5)
        samples.append(ms)
        leaked = sum("ref B-" in t for t in got)
        leaks += leaked > 0
        hits += any(item in t for t in got)
        empty += not got
    return result(
        samples,
        searches - leaks,
        leaks,
        add_per_s=size / add_s,
        add_s=add_s,
        hit_rate=hits / searches,
        empty_results=empty,
        what=f"{size} memories of 2 users; alice searches; a result of bob's is a failure",
    )


def worker_args(args: argparse.Namespace) -> list[str]:
    out = ["--dir", args.dir, "--increments", str(args.increments)]
    if args.db_url:
        out += ["--db-url", args.db_url]
    if args.address:
        out += ["--address", args.address]
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True, help="the system's data directory (fresh)")
    p.add_argument("--db-url", default="", help="database URL where the system takes one")
    p.add_argument("--address", default="", help="server address (sessionkit over gRPC)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--calls", type=int, default=300, help="timed calls per scenario")
    p.add_argument("--events", type=int, default=1000)
    p.add_argument("--reads", type=int, default=20)
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--increments", type=int, default=200)
    p.add_argument("--memory-sizes", default="1000,10000")
    p.add_argument("--searches", type=int, default=100)
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    return p


def main(adapter_cls: type[Adapter], driver: str) -> None:
    args = parser().parse_args()
    os.makedirs(args.dir, exist_ok=True)
    a = adapter_cls(args)
    try:
        if args.worker == "increment":
            print(json.dumps(increment_worker(a, args.increments)), flush=True)
            return
        if args.worker == "read-counter":
            print(json.dumps({"value": a.get_state(a.session("counter"), "n")}), flush=True)
            return
        wanted = args.scenarios.split(",")
        out: dict[str, Any] = {"system": a.name, "scenarios": {}, "errors": {}}
        runs: dict[str, Callable[[], Any]] = {
            "restore_1": lambda: restore(a, 1, args.calls),  # first: the store holds this one session
            "restore_100": lambda: restore(a, 100, args.calls),
            "roundtrip": lambda: roundtrip(a, args.calls),
            "events": lambda: events(a, args.events, args.reads),
            "increments": lambda: increments(args, driver),
        }
        for size in (int(x) for x in args.memory_sizes.split(",") if x):
            runs[f"memory_{size}"] = functools.partial(memory, a, size, args.searches)
        for name, run in runs.items():
            if name not in wanted and not (name.startswith("memory_") and "memory" in wanted):
                continue
            began = time.perf_counter()
            try:
                out["scenarios"][name] = run()
            except Exception as e:  # report what the system could not do, go on with the rest
                out["errors"][name] = f"{type(e).__name__}: {str(e)[:300]}"
            print(f"  {a.name}: {name} {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)
        out["notes"] = a.notes
        print(json.dumps(out), flush=True)
    finally:
        a.close()
