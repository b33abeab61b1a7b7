"""Agents with API keys and TLS on: the agent service calls the state, memory and knowledge services
with the caller's own key (so a key reaches only its tenant's sessions through an agent too), and the
SDK sends its key and trusts the server's certificate."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sessionkit import PermissionDenied, Session, Unauthenticated
from sessionkit_server.common.auth import server_interceptors
from sessionkit_server.common.config import ServerSettings
from tests.gateway.test_gateway_support import KEY_A, KEY_B, GatewayThread, gateway_settings, self_signed
from tests.llm_server import LLMServer, llm_server_fixture  # noqa: F401 - fixture
from tests.servers import ServerThread

KEYS = {KEY_A: "acme", KEY_B: "globex"}


def keyed_settings(tmp_path: Path, llm_server: LLMServer, **extra: object) -> ServerSettings:
    return ServerSettings(
        port=0,
        data_dir=tmp_path / "data",
        log_format="text",
        llm_base_url=llm_server.base_url,
        llm_model="test-model",
        llm_api_key="sk-test",
        api_keys=KEYS,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
def keyed(tmp_path: Path, llm_server: LLMServer) -> Iterator[ServerThread]:
    settings = keyed_settings(tmp_path, llm_server)
    thread = ServerThread(settings, interceptors=server_interceptors(settings.api_keys)).start()
    yield thread
    thread.stop()


def test_an_agent_acts_with_the_callers_key(keyed: ServerThread, llm_server: LLMServer) -> None:
    s = Session("chat", "u", address=keyed.address, app_name="acme", api_key=KEY_A)
    s.store_long_memory("The user prefers tea")
    agent = s.Agent(name="Bot")
    llm_server.reply("Tea it is.")
    assert agent.chat("What do I drink?") == "Tea it is."
    # The agent read memory and wrote events and memory upstream, all under acme's key.
    assert "prefers tea" in llm_server.chat_requests[0].prompt
    assert [e.role for e in s.get_events()] == ["user", "assistant"]
    deadline = time.monotonic() + 20
    while len(s.list_memories("short")) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # the exchange is written to memory after the reply
    assert len(s.list_memories("short")) == 1

    with pytest.raises(Unauthenticated):
        Session("chat", "u", address=keyed.address, app_name="acme").Agent(name="Bot")
    # Globex's key names acme's session: refused by the agent service's own check.
    with pytest.raises(PermissionDenied):
        Session("chat", "u", address=keyed.address, app_name="acme", api_key=KEY_B).Agent(name="Bot")


def test_the_gateway_agent_protocol_with_keys(keyed: ServerThread, llm_server: LLMServer) -> None:
    gateway = GatewayThread(gateway_settings(api_keys=KEYS), keyed.address).start()
    try:
        llm_server.reply("Hello from acme's agent")
        with httpx.Client(base_url=gateway.url, timeout=60) as http:
            body = {"messages": [{"role": "user", "content": "Hello"}], "context": {"user_id": "u"}}
            reply = http.post("/agent", json=body, headers={"Authorization": f"Bearer {KEY_A}"})
            assert reply.status_code == 200, reply.text
            assert reply.json()["response"] == "Hello from acme's agent"
            sid = reply.json()["session_id"]
            # The other tenant cannot read that conversation, whatever ids it names.
            other = http.get(f"/v1/sessions/{sid}/events?user_id=u", headers={"X-API-Key": KEY_B})
            assert other.status_code == 404
            mine = http.get(f"/v1/sessions/{sid}/events?user_id=u", headers={"X-API-Key": KEY_A})
            assert [e["role"] for e in mine.json()["events"]] == ["user", "assistant"]
    finally:
        gateway.stop()


def test_agents_over_tls(tmp_path: Path, llm_server: LLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed(tmp_path)
    settings = keyed_settings(tmp_path, llm_server, tls_cert_file=cert, tls_key_file=key)
    thread = ServerThread(settings, interceptors=server_interceptors(settings.api_keys)).start()
    try:
        monkeypatch.setenv("SESSIONKIT_TLS_CA_FILE", str(cert))
        monkeypatch.setenv("SESSIONKIT_TLS_SERVER_NAME", "localhost")
        s = Session("tls", "u", address=f"localhost:{thread.port}", app_name="acme", api_key=KEY_A)
        llm_server.reply("secure hello")
        # The agent service calls its own TLS port, trusting its own certificate.
        assert s.Agent(name="Bot").chat("hi") == "secure hello"
        assert s.get_events()[-1].content == "secure hello"
    finally:
        thread.stop()
