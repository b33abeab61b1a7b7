"""Side by side: sessionkit (embedded and over gRPC), praisonaiagents' Session and google-adk's
DatabaseSessionService on the same scenarios, in one run (issue 15 item 7; part of ``make bench``).

Each other system runs in its own virtualenv, created on first use under the cache directory
(``SESSIONKIT_BENCH_VENVS``, default ~/.cache/sessionkit/bench-venvs) from the pinned versions below,
so nothing they install touches the project's environment. Each system's driver (driver_*.py) runs
the scenarios of scenarios.py and prints JSON; this script starts them one after the other on fresh
data directories and fresh PostgreSQL databases, prints speed ratios against sessionkit embedded
and the failures side by side, and records the figures for the report (bench/report.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "sdk"), str(ROOT)]

from report import Recorder, percentile  # noqa: E402

# Pinned: a new release changes the figures; bump deliberately and rerun.
VENVS = {
    "praisonai": ["praisonaiagents==1.7.17"],
    "adk": ["google-adk[db]==2.15.0", "asyncpg==0.32.0", "aiosqlite==0.22.1"],
}
CACHE = Path(os.environ.get("SESSIONKIT_BENCH_VENVS", Path.home() / ".cache" / "sessionkit" / "bench-venvs"))
PG = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
BASELINE = "sessionkit-embedded"


def ensure_venv(name: str) -> Path:
    """The system's virtualenv with its pinned packages; created once, reused while the pins hold."""
    venv = CACHE / name
    python = venv / "bin" / "python"
    stamp = venv / "pins.json"
    pins = VENVS[name]
    if python.exists() and stamp.exists() and json.loads(stamp.read_text()) == pins:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    began = time.perf_counter()
    print(f"creating {venv} ({' '.join(pins)}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins],
        check=True,
        timeout=900,
    )
    stamp.write_text(json.dumps(pins))
    print(f"  installed in {time.perf_counter() - began:.0f} s", flush=True)
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fresh_db(name: str) -> str | None:
    host = PG.split("@", 1)[1].split("/")[0].split(":")
    args = ["-h", host[0], "-p", host[1] if len(host) > 1 else "5432", "-U", "postgres"]
    if subprocess.run(["pg_isready", *args[:4]], capture_output=True).returncode != 0:
        return None
    subprocess.run(["dropdb", *args, "--if-exists", "--force", name], check=True, capture_output=True)
    subprocess.run(["createdb", *args, name], check=True, capture_output=True)
    return f"{PG}/{name}"


def project_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "sdk"), str(ROOT)]),
        "HF_HUB_OFFLINE": "1",
        "SESSIONKIT_LOG_LEVEL": "WARNING",
    }


class Server:
    """``sessionkit serve`` (every service but the gateway) on a TCP port, like a deployment."""

    def __init__(self, data_dir: Path, database_url: str) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "sessionkit.cli", "serve", "--port", str(self.port), "--http-port", "0"]
        cmd += ["--data-dir", str(data_dir)] + (["--database-url", database_url] if database_url else [])
        for service in ("state", "memory", "knowledge"):
            cmd += ["--service", service]
        self.proc = subprocess.Popen(cmd, env=project_env(), stderr=subprocess.DEVNULL)
        from tests.servers import wait_serving

        wait_serving(f"127.0.0.1:{self.port}", timeout=120)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def drive(
    system: str, python: Path, driver: str, data_dir: Path, extra: list[str], opts: list[str]
) -> dict[str, Any]:
    cmd = [str(python), str(HERE / driver), "--dir", str(data_dir), *extra, *opts]
    env = project_env() if driver == "driver_sessionkit.py" else {**os.environ, "PYTHONPATH": ""}
    began, load_before = time.perf_counter(), os.getloadavg()[0]
    print(f"\n== {system}", flush=True)
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, timeout=7200)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {"system": system, "scenarios": {}, "errors": {"driver": f"exit status {proc.returncode}"}}
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["system"] = system
    out["seconds"] = time.perf_counter() - began
    # The systems run one after another: a load that changes between their runs moves the ratios.
    out["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return out


def flatten(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """scenario -> figures; the events scenario has two parts."""
    flat = {}
    for name, r in result["scenarios"].items():
        if "samples_ms" in r:
            flat[name] = r
        else:
            for part, sub in r.items():
                flat[f"{name}_{part}"] = sub
    return flat


def summarize(results: list[dict[str, Any]], rec: Recorder) -> str:
    flat = {r["system"]: flatten(r) for r in results}
    scenarios = list(dict.fromkeys(name for f in flat.values() for name in f))
    systems = [r["system"] for r in results]
    lines = [
        "| scenario | " + " | ".join(systems) + " |",
        "|---|" + "---|" * len(systems),
    ]
    for name in scenarios:
        base = flat.get(BASELINE, {}).get(name)
        base_p50 = statistics.median(base["samples_ms"]) if base and base["samples_ms"] else None
        cells = []
        for system in systems:
            r = flat[system].get(name)
            if r is None or not r["samples_ms"]:
                why = next(
                    (v for k, v in results[systems.index(system)]["errors"].items() if name.startswith(k)), ""
                )
                cells.append(f"not run{': ' + why[:60] if why else ''}")
                continue
            p50 = statistics.median(r["samples_ms"])
            total = r["ok"] + r["failures"] if "lost_updates" not in r else r["expected"]
            verdict = f"{r['failures']} failed of {total}"
            if "lost_updates" in r:
                verdict = f"{r['lost_updates']} lost, {r['errors']} errors, {r['conflicts_retried']} retries"
            if "add_per_s" in r:
                verdict += f", adds {r['add_per_s']:.0f}/s, hits {r['hit_rate']:.0%}"
            ratio = f" ({p50 / base_p50:.2f}x)" if base_p50 else ""
            cells.append(f"{p50:.2f} ms{ratio}; {verdict}")
            rec.value(
                f"{name} {system}",
                p50,
                n=len(r["samples_ms"]),
                p99=percentile(r["samples_ms"], 0.99),
                baseline=f"{name} {BASELINE}" if base_p50 else None,
                baseline_median=base_p50,
                note=verdict,
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Load average (1 min) before / after each system's run: "
        + ", ".join(f"{r['system']} {r.get('load_average', '?')}" for r in results)
    )
    lines.append("")
    lines.append("Cells: p50 per call (ratio to sessionkit embedded); correctness. Behaviour notes:")
    seen: set[str] = set()
    for r in results:
        for note in r.get("notes", []):
            if note in seen:
                continue
            seen.add(note)
            lines.append(f"- {r['system']}: {note}")
        for name, err in r.get("errors", {}).items():
            lines.append(f"- {r['system']}: {name} failed to run: {err}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer calls, 1k memories only (make bench-quick)")
    p.add_argument("--systems", default="", help="comma-separated subset of the systems")
    args = p.parse_args()
    opts = [
        "--calls",
        "50",
        "--reads",
        "5",
        "--increments",
        "100",
        "--memory-sizes",
        "1000",
        "--searches",
        "30",
    ]
    if not args.quick:
        opts = ["--calls", "300", "--reads", "20", "--memory-sizes", "1000,10000", "--searches", "100"]
    no_memory = [*opts, "--scenarios", "restore_1,restore_100,roundtrip,events,increments"]

    pythons = {"sessionkit": Path(sys.executable)}
    for name in VENVS:
        try:
            pythons[name] = ensure_venv(name)
        except (subprocess.SubprocessError, OSError) as e:  # no registry here: compare what runs
            print(f"{name}: its virtualenv could not be created ({e}); its systems are skipped", flush=True)
    rec = Recorder("compare", "quick" if args.quick else "", config={"pins": VENVS, "driver_options": opts})
    results: list[dict[str, Any]] = []
    wanted = set(args.systems.split(",")) if args.systems else None
    with tempfile.TemporaryDirectory(prefix="sk-compare-") as tmp:
        root = Path(tmp)

        def want(system: str) -> bool:
            return wanted is None or system in wanted

        sk, drv = pythons["sessionkit"], "driver_sessionkit.py"
        if want(BASELINE):
            results.append(drive(BASELINE, sk, drv, root / "sk-embedded", [], opts))
        if want("sessionkit-grpc-sqlite") and (wanted or not args.quick):  # quick: embedded covers SQLite
            server = Server(root / "sk-grpc", "")
            try:
                addr = ["--address", f"127.0.0.1:{server.port}"]
                results.append(drive("sessionkit-grpc-sqlite", sk, drv, root / "sk-grpc-c", addr, opts))
            finally:
                server.stop()
        pg_sk = fresh_db("compare_sk_db") if want("sessionkit-grpc-pg") else None
        if pg_sk:
            server = Server(root / "sk-grpc-pg", pg_sk)
            try:
                addr = ["--address", f"127.0.0.1:{server.port}"]
                results.append(drive("sessionkit-grpc-pg", sk, drv, root / "sk-pg-c", addr, no_memory))
            finally:
                server.stop()
        if want("praisonai") and "praisonai" in pythons:
            results.append(
                drive("praisonai", pythons["praisonai"], "driver_praisonai.py", root / "pr", [], opts)
            )
        if want("adk-sqlite") and "adk" in pythons:
            results.append(drive("adk-sqlite", pythons["adk"], "driver_adk.py", root / "adk", [], opts))
        pg_adk = fresh_db("compare_adk_db") if want("adk-pg") and "adk" in pythons else None
        if pg_adk:
            url = ["--db-url", pg_adk.replace("postgresql://", "postgresql+asyncpg://")]
            results.append(drive("adk-pg", pythons["adk"], "driver_adk.py", root / "adk-pg", url, no_memory))
    table = summarize(results, rec)
    print("\n" + table)
    rec.save()
    raw = rec.save().with_name(f"compare{'-quick' if args.quick else ''}-raw.json.txt")
    raw.write_text(json.dumps(results))
    (raw.with_name(f"compare{'-quick' if args.quick else ''}.md")).write_text(table + "\n")


if __name__ == "__main__":
    main()
