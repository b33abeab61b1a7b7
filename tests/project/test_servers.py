"""The test helpers that run child processes (tests/servers.py): a chatty child never blocks on its
output, a stopped or killed child is always reaped, and a server that dies at start is reported at once
with its log."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.servers import ChildProcess, ServerProcess

#: Far more than a pipe holds (64 KiB on Linux): with stderr on a pipe read only after exit, this
#: child would block on its first full pipe and never exit.
CHATTY = "import sys\nfor _ in range(4096): sys.stderr.write('x' * 1023 + '\\n')\nprint('done')"

IGNORES_SIGTERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(120)"
)


def test_a_chatty_child_runs_to_its_end(tmp_path: Path) -> None:
    child = ChildProcess([sys.executable, "-c", CHATTY], tmp_path / "chatty.log")
    assert child.wait(timeout=60) == 0
    log = child.log()
    assert log.count("x" * 1023) == 4096 and log.rstrip().endswith("done")


def _reaped(pid: int) -> bool:
    """Gone from the process table: not running, and not a zombie waiting for its parent."""
    return not Path(f"/proc/{pid}").exists()


def test_stop_kills_a_child_that_ignores_sigterm_and_reaps_it(tmp_path: Path) -> None:
    child = ChildProcess([sys.executable, "-c", IGNORES_SIGTERM], tmp_path / "stubborn.log")
    deadline = time.monotonic() + 30
    while "ready" not in child.log():
        assert time.monotonic() < deadline, "the child never got ready"
        time.sleep(0.05)
    started = time.monotonic()
    assert child.stop(timeout=1) == -9
    assert time.monotonic() - started < 10
    assert _reaped(child.pid)


def test_leaving_the_context_kills_and_reaps(tmp_path: Path) -> None:
    with ChildProcess([sys.executable, "-c", IGNORES_SIGTERM], tmp_path / "ctx.log") as child:
        pid = child.pid
    assert child.returncode == -9
    assert _reaped(pid)


def test_a_server_that_dies_at_start_is_reported_at_once_with_its_log(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with") as failed:
        ServerProcess(free_port(), tmp_path / "data", database_url="nosuchdb://x")
    assert time.monotonic() - started < 25, "waited for the health check of a dead server"
    assert "nosuchdb" in str(failed.value)
    assert os.listdir(tmp_path)  # its log is kept next to the data directory
