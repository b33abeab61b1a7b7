"""What the memory benchmarks share: a ``sessionkit serve --service state --service memory`` in its own
process on a data directory, percentiles, and a line about the machine."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "sdk"), str(ROOT)]

from memory_dataset import words  # noqa: E402
from state_latency import free_port  # noqa: E402

from services.memory.store import lexical_terms  # noqa: E402
from tests.servers import wait_serving  # noqa: E402

#: NLTK's English stop-word list (for the "no stop words" what-if; not tuned to this data set).
STOP_WORDS = frozenset(
    words(
        "i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself "
        "yourselves he him his himself she she's her hers herself it it's its itself they them their "
        "theirs themselves what which who whom this that that'll these those am is are was were be been "
        "being have has had having do does did doing a an the and but if or because as until while of at "
        "by for with about against between into through during before after above below to from up down "
        "in out on off over under again further then once here there when where why how all any both each "
        "few more most other some such no nor not only own same so than too very s t can will just don "
        "don't should should've now d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn "
        "doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't needn "
        "needn't shan shan't shouldn shouldn't wasn wasn't weren weren't won won't wouldn wouldn't"
    )
)


def without_stop_words(query: str) -> str:
    return " ".join(w for w in lexical_terms(query, 1000) if w not in STOP_WORDS)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class MemoryServer:
    """``sessionkit serve --service state --service memory`` in a child process (a deployment: the
    benchmark client never shares a GIL or a model with it)."""

    def __init__(self, data_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""

    def start(self, timeout: float = 120.0) -> MemoryServer:
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": f"{ROOT / 'sdk'}{os.pathsep}{ROOT}",
            "HF_HUB_OFFLINE": "1",
            "SESSIONKIT_DATA_DIR": str(self.data_dir),
            "SESSIONKIT_LOG_LEVEL": "WARNING",
            **self.extra_env,
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sessionkit.cli",
                "serve",
                "--service",
                "state",
                "--service",
                "memory",
                "--port",
                str(port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.address = f"127.0.0.1:{port}"
        wait_serving(self.address, timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


def machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), Python "
        f"{platform.python_version()}, load average {load} at {time.strftime('%Y-%m-%d %H:%M')}"
    )
