"""Cold start (issue 15 item 6): in a fresh directory, how long a user waits for the first state call
after creating the Session (the embedded server starts: target 2 s), for the first memory search (the
embedding model loads: target 5 s) and for the first knowledge search after it (the model must not
load twice: memory and knowledge share the server's one model). Also the embedded server's resident
memory at each step and under load, and each service's own (``sessionkit serve --service X``).

Each trial is a new python process in a new directory (what a user's first run does); the baseline
is the same interpreter's bare start (``python -c pass``) in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "sdk"), str(ROOT)]

from report import Recorder  # noqa: E402

TARGET_STATE_S, TARGET_MEMORY_S = 2.0, 5.0

# Runs in a fresh interpreter: times as a user sees them, then the server's RSS at each step.
TRIAL = r"""
import json, sys, time, threading
from pathlib import Path
t0 = time.perf_counter()
from sessionkit import Session
t_import = time.perf_counter()
d = Path(sys.argv[1])
def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
s = Session("cold", user_id="u", storage_path=d, timeout=300)
t_session = time.perf_counter()
s.set_state("k", 1)
assert s.get_state("k") == 1
t_state = time.perf_counter()
pid = int((d / "server.lock").read_text().split()[0])
rss_state = rss(pid)
s.add_memory("The user's favourite tea is a smoky lapsang souchong")
found = s.search_memory("which tea does the user like?")
t_memory = time.perf_counter()
rss_memory = rss(pid)
(d / "doc.txt").write_text("Sourdough needs a starter fed with flour and water every day. " * 20)
s.add_knowledge(d / "doc.txt")
t_kadd = time.perf_counter()
hits = s.search_knowledge("how is a sourdough starter fed?")
t_knowledge = time.perf_counter()
rss_knowledge = rss(pid)
peak = [rss_knowledge]
stop = time.perf_counter() + float(sys.argv[2])
def load(i):
    x = Session(f"load{i}", user_id="u", storage_path=d, timeout=300)
    n = 0
    while time.perf_counter() < stop:
        x.set_state("n", n); x.get_state("n")
        x.add_memory(f"note {i}-{n}: tea number {n}")
        x.search_memory("tea"); x.search_knowledge("starter")
        n += 1
threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
for t in threads: t.start()
while any(t.is_alive() for t in threads):
    peak.append(rss(pid)); time.sleep(0.2)
print(json.dumps({
    "import_s": t_import - t0, "session_s": t_session - t_import,
    "first_state_s": t_state - t_session, "first_memory_search_s": t_memory - t_state,
    "first_knowledge_add_s": t_kadd - t_memory, "first_knowledge_search_s": t_knowledge - t_kadd,
    "memory_found": bool(found), "knowledge_found": bool(hits),
    "rss_after_state_mb": rss_state, "rss_after_memory_mb": rss_memory,
    "rss_after_knowledge_mb": rss_knowledge, "rss_under_load_mb": max(peak), "server_pid": pid,
}))
"""


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "sdk"), str(ROOT)]),
        "HF_HUB_OFFLINE": "1",
    }


def stop_server(pid: int) -> None:
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.1)


def trial(load_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sk-cold-") as tmp:
        d = Path(tmp) / "store"
        out = subprocess.run(
            [sys.executable, "-c", TRIAL, str(d), str(load_s)], env=env(), capture_output=True, text=True
        )
        if out.returncode != 0:
            raise RuntimeError(f"cold-start trial failed:\n{out.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        stop_server(result["server_pid"])
        return result


def bare_start() -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - began


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_service(service: str, address: str, seconds: float, done: threading.Event) -> None:
    """4 threads of the service's calls for ``seconds``."""
    from sessionkit import Session

    stop = time.perf_counter() + seconds
    doc = Path(tempfile.mkdtemp(prefix="sk-rss-doc-")) / "doc.txt"
    doc.write_text("Sourdough needs a starter fed with flour and water every day. " * 50)

    def one(i: int) -> None:
        s = Session(f"load{i}", user_id="u", address=address, timeout=300)
        if service == "knowledge":
            s.add_knowledge(doc)
        n = 0
        while time.perf_counter() < stop:
            if service == "state":
                s.set_state("n", n)
                s.get_state("n")
            elif service == "memory":
                s.add_memory(f"note {i}-{n}: tea number {n}")
                s.search_memory("tea")
            else:
                s.search_knowledge("how is a starter fed?")
            n += 1
        s.close()

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        done.set()


def service_rss(service: str, load_s: float) -> dict[str, float]:
    """One service alone (``sessionkit serve --service X``): RSS idle after start and peak under load."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix=f"sk-rss-{service}-") as tmp:
        cmd = [sys.executable, "-m", "sessionkit.cli", "serve", "--service", service, "--port", str(port)]
        cmd += ["--http-port", "0", "--data-dir", tmp]
        proc = subprocess.Popen(cmd, env=env(), stderr=subprocess.DEVNULL)
        try:
            from tests.servers import wait_serving

            wait_serving(f"127.0.0.1:{port}", timeout=120)
            time.sleep(1.0)
            idle = rss_mb(proc.pid)
            peak = [idle]
            done = threading.Event()
            worker = threading.Thread(target=load_service, args=(service, f"127.0.0.1:{port}", load_s, done))
            worker.start()
            while not done.is_set():
                peak.append(rss_mb(proc.pid))
                time.sleep(0.2)
            worker.join()
            return {"idle_mb": idle, "load_mb": max(peak)}
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--trials", type=int, default=3, help="fresh directories (each a new process)")
    p.add_argument("--load-seconds", type=float, default=10.0, help="4 threads of mixed calls")
    p.add_argument("--quick", action="store_true", help="2 trials, 5 s of load")
    p.add_argument("--no-services", action="store_true", help="skip the per-service RSS")
    args = p.parse_args()
    if args.quick:
        args.trials, args.load_seconds = 2, 5.0
    bare = [bare_start() for _ in range(5)]
    trials = []
    for i in range(args.trials):
        trials.append(trial(args.load_seconds))
        t = trials[-1]
        print(
            f"trial {i + 1}: import {t['import_s']:.2f} s, first state {t['first_state_s']:.2f} s, "
            f"first memory search {t['first_memory_search_s']:.2f} s, first knowledge search "
            f"{t['first_knowledge_search_s']:.2f} s; server RSS {t['rss_after_state_mb']:.0f} / "
            f"{t['rss_after_memory_mb']:.0f} / {t['rss_after_knowledge_mb']:.0f} / load "
            f"{t['rss_under_load_mb']:.0f} MB",
            flush=True,
        )
    rec = Recorder("cold_start", config={"trials": args.trials, "load_seconds": args.load_seconds})
    rec.samples("python -c pass (baseline)", [x * 1000 for x in bare])

    def col(key: str) -> list[float]:
        return [t[key] * 1000 for t in trials]

    rec.samples("import sessionkit", col("import_s"), baseline="python -c pass (baseline)")
    rec.samples("Session() created", col("session_s"))
    state = rec.samples("first state call after Session()", col("first_state_s"))
    state.baseline, state.baseline_median = "target 2 s", TARGET_STATE_S * 1000
    state.ratio = state.median / state.baseline_median
    mem = rec.samples("first memory add + search (model loads)", col("first_memory_search_s"))
    mem.baseline, mem.baseline_median = "target 5 s", TARGET_MEMORY_S * 1000
    mem.ratio = mem.median / mem.baseline_median
    rec.samples("first knowledge add (model shared)", col("first_knowledge_add_s"))
    rec.samples("first knowledge search (model shared)", col("first_knowledge_search_s"))
    for key, label in (
        ("rss_after_state_mb", "embedded server RSS after the first state call"),
        ("rss_after_memory_mb", "embedded server RSS after the first memory search"),
        ("rss_after_knowledge_mb", "embedded server RSS after the first knowledge search"),
        ("rss_under_load_mb", "embedded server RSS peak under load"),
    ):
        rec.value(label, statistics.median(t[key] for t in trials), n=len(trials), unit="MB")
    grew = statistics.median(t["rss_after_knowledge_mb"] - t["rss_after_memory_mb"] for t in trials)
    print(f"RSS growth from the first memory search to the first knowledge search: {grew:.0f} MB")
    if not args.no_services:
        for service in ("state", "memory", "knowledge"):
            got = service_rss(service, args.load_seconds)
            print(f"service {service}: RSS idle {got['idle_mb']:.0f} MB, under load {got['load_mb']:.0f} MB")
            rec.value(f"{service} service RSS idle", got["idle_mb"], n=1, unit="MB")
            rec.value(f"{service} service RSS under load", got["load_mb"], n=1, unit="MB")
    path = rec.save()
    for f in rec.figures:
        ratio = f" ({f.ratio:.2f}x {f.baseline})" if f.ratio is not None else ""
        print(f"{f.name:58} {f.median:9.1f} {f.unit}{ratio}")
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
