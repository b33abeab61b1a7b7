"""The Node.js client (clients/node) against a real server: its `node --test` suite creates sessions,
saves and increments state concurrently, adds and searches memories, streams an agent turn from a real
OpenAI-compatible LLM server, and reads the typed error details of bad requests. The server checks API
keys, so every call proves the client sends its key."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessionkit_server.common.auth import server_interceptors
from sessionkit_server.common.config import ServerSettings
from tests.llm_server import LLMServer, Received, Reply, llm_server_fixture  # noqa: F401 - fixture
from tests.node_tools import NODE, NODE_DIR, needs_node, node_modules
from tests.servers import ServerThread

pytestmark = [needs_node, pytest.mark.slow]

API_KEY = "node-client-test-key-0123456789"
TENANT = "node-client"  # owns the app "node-client" the Node tests use


def _echo(request: Received) -> Reply:
    """What the agent tests expect from the model: the user's last message, repeated; after seconds
    when it starts with "slow:" (so that a second turn finds the conversation busy)."""
    last = str(next(m for m in reversed(request.messages) if m.get("role") == "user")["content"])
    return Reply(content=f"You said: {last}", delay=3.0 if last.startswith("slow:") else 0.0)


@pytest.fixture
def server(tmp_path: Path, llm_server: LLMServer) -> Iterator[ServerThread]:
    llm_server.fallback = _echo
    settings = ServerSettings(
        port=0,
        data_dir=tmp_path / "data",
        log_format="text",
        llm_base_url=llm_server.base_url,
        llm_model="test-model",
        llm_api_key="sk-test",
        api_keys={API_KEY: TENANT},
    )
    thread = ServerThread(settings, interceptors=server_interceptors(settings.api_keys)).start()
    yield thread
    thread.stop()


def test_node_client_suite(server: ServerThread) -> None:
    node_modules()
    assert NODE is not None
    tests = sorted(str(p.relative_to(NODE_DIR)) for p in (NODE_DIR / "test").glob("*.test.js"))
    expected = sum(len(re.findall(r"^test\(", (NODE_DIR / t).read_text(), re.M)) for t in tests)
    env = {**os.environ, "SESSIONKIT_ADDRESS": server.address, "SESSIONKIT_API_KEY": API_KEY}
    done = subprocess.run(
        [NODE, "--test", "--test-reporter=tap", *tests],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"node --test failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    # Every test of the suite ran and passed (none skipped, cancelled or left out).
    summary = dict(re.findall(r"^# (tests|pass|fail|skipped|cancelled|todo) (\d+)$", done.stdout, re.M))
    assert summary == {
        "tests": str(expected),
        "pass": str(expected),
        "fail": "0",
        "skipped": "0",
        "cancelled": "0",
        "todo": "0",
    }, done.stdout
