"""The Node.js client (clients/node) against a real server: its `node --test` suite creates sessions,
saves and increments state concurrently, adds and searches memories, streams agent turns and a workflow
from a real OpenAI-compatible LLM server, and reads the typed error details of bad requests; its calls
spread over every address of a target (round_robin); and docs/CLIENTS.md's example runs as written.
The server checks API keys, so every call proves the client sends its key."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessionkit_server.common.auth import server_interceptors
from sessionkit_server.common.config import ServerSettings
from tests.faults.support import Served
from tests.llm_server import LLMServer, Received, Reply, ToolCall
from tests.node_tools import NODE, NODE_DIR, ROOT, needs_node, node_modules
from tests.servers import ServerThread

pytestmark = [needs_node, pytest.mark.slow]

API_KEY = "node-client-test-key-0123456789"
TENANT = "node-client"  # owns the app "node-client" the Node tests use
OPERATOR_KEY = "node-client-operator-key-0123456789"  # every app: the docs' example uses "demo"


def _model(request: Received) -> Reply:
    """The model the Node tests expect: it repeats the user's last message ("You said: ..."), after
    seconds when that starts with "slow:" (so that a second turn finds the conversation busy); for one
    starting with "tool:" it calls the client's `lookup` tool with the rest, then reports the result."""
    messages = request.messages
    if messages and messages[-1].get("role") == "tool":
        return Reply(content=f"The tool said: {messages[-1]['content']}")
    last = str(next(m for m in reversed(messages) if m.get("role") == "user")["content"])
    if last.startswith("tool:"):
        return Reply(tool_calls=[ToolCall("lookup", {"q": last.removeprefix("tool:").strip()})])
    return Reply(content=f"You said: {last}", delay=3.0 if last.startswith("slow:") else 0.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """One server for the module: the embedding model's first load is most of its time."""
    llm = LLMServer().start()
    llm.fallback = _model
    settings = ServerSettings(
        port=0,
        data_dir=tmp_path_factory.mktemp("node-client") / "data",
        log_format="text",
        llm_base_url=llm.base_url,
        llm_model="test-model",
        llm_api_key="sk-test",
        api_keys={API_KEY: TENANT, OPERATOR_KEY: "*"},
    )
    thread = ServerThread(settings, interceptors=server_interceptors(settings.api_keys)).start()
    yield thread
    thread.stop()
    llm.stop()


def _node(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    node_modules()
    assert NODE is not None
    done = subprocess.run(
        [NODE, *args],
        cwd=NODE_DIR,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"node {args} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def _run_tests(test_file: str, env: dict[str, str]) -> None:
    """`node --test` on one file of clients/node/test: every test in it must run and pass."""
    expected = len(re.findall(r"^test\(", (NODE_DIR / "test" / test_file).read_text(), re.M))
    done = _node(["--test", "--test-reporter=tap", f"test/{test_file}"], env)
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


def test_node_client_suite(server: ServerThread) -> None:
    _run_tests("client.test.js", {"SESSIONKIT_ADDRESS": server.address, "SESSIONKIT_API_KEY": API_KEY})


def test_node_client_balances_over_addresses(tmp_path: Path) -> None:
    """Two servers with storage of their own: the client's calls reach both."""
    servers = [
        ServerThread(ServerSettings(port=0, data_dir=tmp_path / f"data{i}", log_format="text")).start()
        for i in range(2)
    ]
    try:
        _run_tests("balancing.test.js", {"SESSIONKIT_ADDRESSES": ",".join(s.address for s in servers)})
    finally:
        for server in servers:
            server.stop()


def test_node_client_fails_on_a_stopped_server_within_its_keepalive(tmp_path: Path) -> None:
    """A server process stopped with SIGSTOP (by the Node test, which continues it after): an open
    watch and a call without a deadline fail within the keepalive bound (issue 14, Faults)."""
    served = Served(tmp_path / "data")
    try:
        env = {"SESSIONKIT_ADDRESS": served.address, "SESSIONKIT_SERVER_PID": str(served.child.proc.pid)}
        _run_tests("silence.test.js", env)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(served.child.proc.pid, signal.SIGCONT)
        served.close()


def test_docs_example_runs(server: ServerThread, tmp_path: Path) -> None:
    """docs/CLIENTS.md's Node.js example, with only its address and the package's path changed."""
    doc = (ROOT / "docs" / "CLIENTS.md").read_text()
    match = re.search(r"```js\n(.*?)```", doc, re.S)
    assert match, "docs/CLIENTS.md has no ```js example"
    code = match.group(1)
    for old, new in [
        ("require('@sessionkit/client')", f"require({str(NODE_DIR / 'src' / 'client.js')!r})"),
        ("'127.0.0.1:50051'", "process.env.SESSIONKIT_ADDRESS"),
    ]:
        assert old in code, f"the example no longer has {old}: update this test"
        code = code.replace(old, new)
    script = tmp_path / "example.js"
    script.write_text(
        f"(async () => {{\n{code}}})().catch((e) => {{ console.error(e); process.exit(1); }});\n"
    )
    env = {"SESSIONKIT_ADDRESS": server.address, "SESSIONKIT_API_KEY": OPERATOR_KEY}
    out = _node([str(script)], env).stdout.splitlines()
    # The lines the example's comments promise, then the streamed reply and the error's fields.
    # A Struct is a map: its keys come in no fixed order.
    assert out[0] in ("{ step: 1, tags: [ 'a' ] } 1", "{ tags: [ 'a' ], step: 1 } 1"), out
    assert out[1] == "You said: Hi", out
    assert out[2].startswith("turn "), out
    assert out[3] == "NOT_FOUND SESSION_NOT_FOUND [] null", out
