"""`sessionkit memory search|ls|reindex` as a user runs them, against a real server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessionkit import Session
from sessionkit_server.common.config import ServerSettings
from tests.servers import ServerThread, child_env


@pytest.fixture
def memory_server(tmp_path: Path) -> Iterator[ServerThread]:
    settings = ServerSettings(
        port=0, data_dir=tmp_path / "data", services=["state", "memory"], log_format="text"
    )
    thread = ServerThread(settings).start()
    yield thread
    thread.stop()


def cli(server: ServerThread, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sessionkit.cli", "memory", *args, "--address", server.address],
        env=child_env(COLUMNS="200"),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_memory_search_ls_and_reindex(memory_server: ServerThread) -> None:
    s = Session("s1", user_id="ana", address=memory_server.address)
    s.store_long_memory("Ana is training for the Berlin marathon")
    s.store_long_memory("Ana's daughter is called Rita")
    listed = cli(memory_server, "ls", "--user", "ana")
    assert listed.returncode == 0, listed.stderr
    assert "2 memories" in listed.stdout
    found = cli(memory_server, "search", "running a race", "--user", "ana", "--limit", "1")
    assert found.returncode == 0, found.stderr
    assert "Berlin marathon" in found.stdout and "Rita" not in found.stdout
    rebuilt = cli(memory_server, "reindex")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "2 memories scanned, 2 vectors written" in rebuilt.stdout
    assert (
        s.search_memory("marathon training", limit=1)[0]["text"] == "Ana is training for the Berlin marathon"
    )
    other = cli(memory_server, "ls", "--user", "bob")
    assert "0 memories" in other.stdout
    bad = cli(memory_server, "search", "x", "--type", "medium")
    assert bad.returncode == 1 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr
