"""SIGTERM on a real server process: health turns NOT_SERVING at once, a call in flight (an agent turn
held by its LLM) still completes, a new call is refused with UNAVAILABLE (clients retry another replica),
and the process then exits 0."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sessionkit import Session, reasons
from sessionkit.errors import from_rpc_error
from sessionkit.v1 import agent_pb2, agent_pb2_grpc
from tests.conftest import free_port
from tests.llm_server import LLMServer, Reply, llm_server_fixture  # noqa: F401 - the llm_server fixture
from tests.servers import ChildProcess, child_env, wait_serving

pytestmark = pytest.mark.slow


def _eventually(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.05)


def test_sigterm_drains_in_flight_calls_behind_not_serving(tmp_path: Path, llm_server: LLMServer) -> None:
    port = free_port()
    env = child_env(
        SESSIONKIT_PORT=str(port),
        SESSIONKIT_HTTP_PORT="0",
        SESSIONKIT_DATA_DIR=str(tmp_path / "data"),
        SESSIONKIT_LLM_BASE_URL=llm_server.base_url,
        SESSIONKIT_LLM_MODEL="test-model",
        SESSIONKIT_LLM_API_KEY="sk-test",
        SESSIONKIT_DRAIN_SECONDS="120",
    )
    server = ChildProcess(
        [sys.executable, "-m", "sessionkit.cli", "serve", "--service", "state", "--service", "agent"],
        tmp_path / "serve.log",
        env=env,
        cwd=tmp_path,
    )
    address = f"127.0.0.1:{port}"
    gate = threading.Event()
    llm_server.script(Reply("answered while draining", gate=gate))
    answers: list[str] = []
    with server:
        wait_serving(address, timeout=120, child=server)
        session = Session("drain-1", "alice", address=address, timeout=120)
        turn = threading.Thread(target=lambda: answers.append(session.Agent(name="Slow").chat("hi")))
        turn.start()
        _eventually(lambda: bool(llm_server.chat_requests), "the turn reached the LLM")
        with grpc.insecure_channel(address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            server.send_signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
            with pytest.raises(grpc.RpcError) as refused:
                agent_pb2_grpc.AgentServiceStub(channel).ListAgents(agent_pb2.ListAgentsRequest(), timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert from_rpc_error(refused.value).reason == reasons.SERVER_DRAINING.name
        assert turn.is_alive() and server.returncode is None  # still draining: the turn holds it
        gate.set()
        turn.join(timeout=120)
        assert answers == ["answered while draining"]
        assert server.wait(timeout=120) == 0, server.log()[-3000:]
        session.close()
