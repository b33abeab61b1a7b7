"""The gateway as users run it: ``sessionkit serve`` in a child process (gRPC and HTTP in one process),
``sessionkit serve --service gateway --address`` in front of remote services, and clients that only
know the documented protocol: curl, and a plain ``requests`` script."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from sessionkit_server.common.config import ServerSettings
from tests.conftest import free_port
from tests.llm_server import LLMServer, llm_server_fixture  # noqa: F401 - the llm_server fixture
from tests.servers import ChildProcess, ServerThread, child_env, serve_everything, wait_http

pytestmark = pytest.mark.slow

MODEL = "test-model"

#: A client that knows only the documented remote agent protocol (and the legacy body).
REQUESTS_SCRIPT = """
import sys, requests
base = sys.argv[1]
assert requests.get(base + "/health", timeout=30).status_code == 200
documented = {"messages": [{"role": "user", "content": "Hello"}],
              "context": {"session_id": "session_123", "user_id": "user_456"}}
answer = requests.post(base + "/agent", json=documented, timeout=60)
answer.raise_for_status()
body = answer.json()
assert body["session_id"] == "session_123" and isinstance(body["metadata"], dict), body
print(body["response"])
legacy = requests.post(base + "/agent", json={"query": "And again", "user_id": "user_456"}, timeout=60).json()
assert legacy["session_id"] and legacy["session_id"] != "session_123", legacy
print(legacy["response"])
"""


def stop(proc: ChildProcess) -> str:
    """SIGTERM; asserts a clean exit 0 and no traceback; returns its output."""
    code = proc.stop(timeout=30)
    log = proc.log()
    assert code == 0, log
    assert "Traceback" not in log, log
    return log


@pytest.fixture
def served(tmp_path: Path, llm_server: LLMServer) -> Iterator[str]:
    """``sessionkit serve`` with every service and the gateway; yields the gateway's URL."""
    proc, url = serve_everything(tmp_path, llm_server.base_url, MODEL)
    try:
        yield url
    finally:
        log = stop(proc)
    assert f"HTTP gateway on {url}" in log


def test_curl_speaks_the_documented_protocol(served: str, llm_server: LLMServer) -> None:
    llm_server.reply("Hello from the gateway")
    body = {
        "messages": [{"role": "user", "content": "Hello"}],
        "context": {"session_id": "c1", "user_id": "u"},
    }
    result = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "-X", "POST", f"{served}/agent",
         "-H", "Content-Type: application/json", "-d", json.dumps(body)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == {
        "response": "Hello from the gateway",
        "session_id": "c1",
        "metadata": json.loads(result.stdout)["metadata"],
    }
    health = subprocess.run(["curl", "-sS", f"{served}/health"], capture_output=True, text=True, timeout=30)
    assert json.loads(health.stdout)["status"] == "ok"
    # SSE with curl -N: the events arrive, the last one is the result.
    llm_server.reply("streamed answer")
    stream = subprocess.run(
        ["curl", "-sS", "-N", "-X", "POST", f"{served}/agent", "-H", "Accept: text/event-stream",
         "-H", "Content-Type: application/json", "-d", json.dumps({"query": "stream", "session_id": "c1"})],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "event: started" in stream.stdout and "event: result" in stream.stdout, stream.stdout
    assert stream.stdout.strip().splitlines()[-1].startswith("data: ")
    assert json.loads(stream.stdout.strip().splitlines()[-1][5:])["response"] == "streamed answer"


def test_a_plain_requests_script(served: str, llm_server: LLMServer, tmp_path: Path) -> None:
    llm_server.script("first answer", "second answer")
    script = tmp_path / "client.py"
    script.write_text(REQUESTS_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), served], capture_output=True, text=True, timeout=180, env=child_env()
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["first answer", "second answer"]


def test_serve_gateway_alone_in_front_of_remote_services(tmp_path: Path) -> None:
    settings = ServerSettings(port=0, data_dir=tmp_path / "data", services=["state"], log_format="text")
    services = ServerThread(settings).start()
    http_port = free_port()
    proc = ChildProcess(
        [sys.executable, "-m", "sessionkit.cli", "serve", "--service", "gateway",
         "--address", services.address, "--http-port", str(http_port)],
        tmp_path / "serve.log", cwd=tmp_path, env=child_env(),
    )  # fmt: skip
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_http(url, proc)
        created = httpx.post(f"{url}/v1/sessions", json={"session_id": "remote"}, timeout=30)
        assert created.status_code == 201, created.text
        assert httpx.put(f"{url}/v1/sessions/remote/state/k", json={"value": 7}, timeout=30).is_success
    finally:
        log = stop(proc)
        services.stop()
    assert "authentication is OFF" in log  # said at start: no keys, loopback only
    assert not (tmp_path / ".sessionkit").exists()  # the gateway alone opens no data directory


def test_serve_gateway_alone_needs_an_address(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sessionkit.cli", "serve", "--service", "gateway"],
        cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "--address" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_http_port_in_use_is_one_error_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = subprocess.run(
            [sys.executable, "-m", "sessionkit.cli", "serve", "--port", "0", "--http-port", port,
             "--service", "state", "--data-dir", str(tmp_path / "data")],
            cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and port in errors[0], result.stderr


def test_serve_refuses_auth_off_on_a_public_interface(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sessionkit.cli", "serve", "--port", "0", "--http-port", "0",
         "--host", "0.0.0.0", "--service", "state", "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "without API keys" in errors[0], result.stderr


def test_serve_with_api_keys_checks_them_on_http_and_on_grpc(tmp_path: Path) -> None:
    key = "serve-key-0123456789abcdef"
    grpc_port, http_port = free_port(), free_port()
    proc = ChildProcess(
        [sys.executable, "-m", "sessionkit.cli", "serve", "--service", "state", "--port", str(grpc_port),
         "--http-port", str(http_port), "--data-dir", str(tmp_path / "data")],
        tmp_path / "serve.log",
        cwd=tmp_path,
        env=child_env(SESSIONKIT_API_KEYS=json.dumps({key: "acme"}), SESSIONKIT_DRAIN_SECONDS="2"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_http(url, proc)
        assert httpx.get(f"{url}/v1/sessions", timeout=30).status_code == 401
        headers = {"Authorization": f"Bearer {key}"}
        assert (
            httpx.post(
                f"{url}/v1/sessions", json={"session_id": "k"}, headers=headers, timeout=30
            ).status_code
            == 201
        )
        # The same server over gRPC: no key, no answer; the key reaches its tenant's app only.
        from sessionkit.v1 import common_pb2, state_pb2, state_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = state_pb2_grpc.StateServiceStub(channel)  # type: ignore[no-untyped-call]
            request = state_pb2.GetSessionRequest(
                session=common_pb2.SessionRef(app_name="acme", session_id="k")
            )
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetSession(request)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert stub.GetSession(request, metadata=[("x-api-key", key)]).session.ref.session_id == "k"
    finally:
        log = stop(proc)
    assert "authentication is OFF" not in log
