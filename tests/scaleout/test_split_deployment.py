"""Each service at its own address: the agent service calling state, memory and knowledge at three
targets, and the HTTP gateway alone with only per-service addresses (no --address)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sessionkit import Session
from sessionkit_server.common.config import ServerSettings, ServiceName
from tests.conftest import free_port
from tests.llm_server import LLMServer, llm_server_fixture  # noqa: F401 - the llm_server fixture
from tests.scaleout.support import CallCounter
from tests.servers import ChildProcess, ServerThread, child_env

pytestmark = pytest.mark.slow


def _one_service(tmp_path: Path, name: ServiceName, counter: CallCounter, **extra: str) -> ServerThread:
    settings = ServerSettings(
        port=0, data_dir=tmp_path / name, services=[name], log_format="text", http_port=0, **extra
    )
    return ServerThread(settings, interceptors=[counter]).start()


@pytest.fixture
def split(tmp_path: Path, llm_server: LLMServer) -> Iterator[dict[str, tuple[ServerThread, CallCounter]]]:
    started: dict[str, tuple[ServerThread, CallCounter]] = {}
    try:
        for name in ("state", "memory", "knowledge"):
            counter = CallCounter()
            started[name] = (_one_service(tmp_path, name, counter), counter)
        counter = CallCounter()
        agent = _one_service(
            tmp_path,
            "agent",
            counter,
            state_address=started["state"][0].address,
            memory_address=started["memory"][0].address,
            knowledge_address=started["knowledge"][0].address,
            llm_base_url=llm_server.base_url,
            llm_model="test-model",
            llm_api_key="sk-test",
        )
        started["agent"] = (agent, counter)
        yield started
    finally:
        for server, _ in started.values():
            server.stop()


def test_the_agent_calls_each_service_at_its_own_address(
    split: dict[str, tuple[ServerThread, CallCounter]], llm_server: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, (server, _) in split.items():
        monkeypatch.setenv(f"SESSIONKIT_{name.upper()}_ADDRESS", server.address)
    llm_server.script("hello from the split deployment")
    with Session("split-1", "alice") as session:
        session.memory.add("alice likes tea")
        assert session.Agent(name="Split").chat("hi") == "hello from the split deployment"
    for name in ("state", "memory", "knowledge"):
        assert split[name][1].total(name.capitalize() + "Service") > 0, f"no call reached {name}"
    # The agent's own server serves only the agent: its upstream calls went to the others.
    assert split["agent"][1].total("StateService") == 0


def test_gateway_alone_with_only_per_service_addresses(tmp_path: Path) -> None:
    counter = CallCounter()
    state = _one_service(tmp_path, "state", counter)
    http_port = free_port()
    proc = ChildProcess(
        [
            sys.executable,
            "-m",
            "sessionkit.cli",
            "serve",
            "--service",
            "gateway",
            "--http-port",
            f"{http_port}",
        ],
        tmp_path / "gateway.log",
        cwd=tmp_path,
        env=child_env(SESSIONKIT_STATE_ADDRESS=state.address),
    )
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 60
        while not _healthy(url):
            assert proc.returncode is None, f"the gateway exited:\n{proc.log()[-3000:]}"
            assert time.monotonic() < deadline, f"no /health within 60 s:\n{proc.log()[-3000:]}"
            time.sleep(0.1)
        created = httpx.post(f"{url}/v1/sessions", json={"session_id": "split"}, timeout=30)
        assert created.status_code == 201, created.text
        assert counter.total("StateService") > 0
    finally:
        proc.stop()
        state.stop()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
