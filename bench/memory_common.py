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

from state_latency import free_port  # noqa: E402

from tests.servers import wait_serving  # noqa: E402


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
