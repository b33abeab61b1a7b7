"""The SDK's remote mode against a real gateway (uvicorn on a real port) in front of real gRPC services and a
scripted OpenAI-compatible LLM (tests/sdk/conftest.py): the seed's remote examples
(``Session(agent_url="host:port/agent")``, test_remote_connection, chat/send_message) and streaming."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from sessionkit import AsyncSession, Session
from sessionkit.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotImplementedByServer,
    SessionKitError,
    Unauthenticated,
)
from sessionkit.remote import agent_base_url
from tests.conftest import free_port
from tests.gateway.test_gateway_support import KEY_A, GatewayThread, gateway_settings, self_signed
from tests.llm_server import LLMServer, Reply
from tests.sdk.remote_support import FaultyProxy
from tests.servers import ServerThread

# -- the seed's remote examples -----------------------------------------------------------------------


def test_the_seed_remote_example(agent_url: str, llm: LLMServer) -> None:
    llm.script("Hello! How can I help you?", "Still here.")
    with Session(session_id="remote_session", agent_url=agent_url) as session:
        assert session.is_remote
        assert session.test_remote_connection() is True
        assert session.chat("Hello from remote client") == "Hello! How can I help you?"
        assert session.send_message("Are you there?") == "Still here."
        # The documented body went out: the user's message, in this session, as the agent's input.
        assert llm.chat_requests[0].messages[-1] == {"role": "user", "content": "Hello from remote client"}
        # Both turns were stored in the session on the server, readable through the same session.
        contents = [e.content for e in session.get_events()]
        assert contents[-4:] == [
            "Hello from remote client",
            "Hello! How can I help you?",
            "Are you there?",
            "Still here.",
        ]
        # The second turn saw the first as history: the gateway session is the SDK session.
        assert "Hello from remote client" in llm.chat_requests[1].prompt


def test_remote_url_https_and_base_url_forms() -> None:
    assert agent_base_url("http://127.0.0.1:8000/agent") == "http://127.0.0.1:8000"
    assert agent_base_url("https://secure-agent.com/api/agent") == "https://secure-agent.com/api"
    assert agent_base_url("http://agent.local:5000") == "http://agent.local:5000"
    with Session(agent_url="https://secure-agent.com/api/agent", timeout=60) as session:
        assert session._async.remote_url == "https://secure-agent.com/api/agent"
    with Session(remote_url="agent.local:5000/chat") as session:
        assert session._async.remote_url == "http://agent.local:5000/chat"


def test_chat_honours_kwargs_and_user_id(agent_url: str, llm: LLMServer, gateway: GatewayThread) -> None:
    llm.reply("as researcher")
    with Session(session_id="kw", user_id="user_456", agent_url=agent_url) as session:
        assert session.chat("hi", agent="Researcher") == "as researcher"
    # The turn is user_456's, in the agent named in kwargs.
    events = httpx.get(f"{gateway.url}/v1/sessions/kw/events", params={"user_id": "user_456"}).json()
    assert [e["content"] for e in events["events"]][-2:] == ["hi", "as researcher"]


def test_api_key_is_sent_as_bearer(services: ServerThread, llm: LLMServer) -> None:
    keyed = GatewayThread(gateway_settings(api_keys={KEY_A: "acme"}), services.address).start()
    try:
        url = f"{keyed.url}/agent"
        llm.reply("authorised")
        with Session(session_id="k", remote_url=url, api_key=KEY_A) as session:
            assert session.chat("hello") == "authorised"
            session.set_state("plan", "pro")
            assert session.get_state("plan") == "pro"
        # No key: refused at once as a typed 401, never retried and never a ConnectionError.
        with Session(session_id="k", remote_url=url) as anonymous:
            started = time.monotonic()
            with pytest.raises(Unauthenticated) as refused:
                anonymous.chat("hello")
            assert time.monotonic() - started < 2
            assert not isinstance(refused.value, ConnectionError)
            assert url in str(refused.value)
    finally:
        keyed.stop()


def test_https_is_honoured(services: ServerThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed(tmp_path)
    secure = GatewayThread(gateway_settings(tls_cert_file=cert, tls_key_file=key), services.address).start()
    try:
        url = f"https://localhost:{secure.server.port}/agent"
        with Session(session_id="tls", agent_url=url) as untrusted:
            # Verified TLS: a certificate this machine does not trust is refused, not ignored.
            assert untrusted.test_remote_connection() is False
            started = time.monotonic()
            with pytest.raises(ConnectionError, match="TLS with the remote agent at https://localhost"):
                untrusted.set_state("k", 1)
            assert time.monotonic() - started < 5  # not retried: a certificate does not become trusted
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust it, as a deployment would its CA
        with Session(session_id="tls", agent_url=url) as trusted:
            assert trusted.test_remote_connection() is True
            trusted.set_state("k", 1)
            assert trusted.get_state("k") == 1
    finally:
        secure.stop()


async def test_async_session_in_remote_mode(agent_url: str, llm: LLMServer) -> None:
    llm.reply("async answer")
    async with AsyncSession(session_id="async_remote", agent_url=agent_url) as session:
        assert await session.test_remote_connection() is True
        assert await session.send_message("hello") == "async answer"
        await session.save_state({"a": 1})
        assert await session.restore_state() == {"a": 1}
        assert [e.content for e in await session.get_events()] == ["hello", "async answer"]


def test_chat_streams_text_pieces_as_they_come(agent_url: str, llm: LLMServer) -> None:
    llm.script(Reply(content="one two three four", piece_delay=0.3))
    with Session(session_id="streamed", agent_url=agent_url) as session:
        started = time.monotonic()
        arrivals: list[tuple[str, float]] = []
        for piece in session.chat("count for me", stream=True):
            arrivals.append((piece, time.monotonic() - started))
        assert "".join(p for p, _ in arrivals) == "one two three four"
        assert len(arrivals) == 4
        # Pieces arrive as the model makes them, not all at once at the end.
        assert arrivals[-1][1] - arrivals[0][1] >= 0.6
        # The turn is stored like a plain chat() turn.
        assert [e.content for e in session.get_events()][-2:] == ["count for me", "one two three four"]
    assert llm.chat_requests[0].body["stream"] is True


async def test_async_chat_stream_and_errors(agent_url: str, llm: LLMServer, tmp_path: Path) -> None:
    llm.script(Reply(content="async pieces here", piece_delay=0.05))
    async with AsyncSession(session_id="astream", agent_url=agent_url) as session:
        pieces = [p async for p in await session.send_message("go", stream=True)]
        assert "".join(pieces) == "async pieces here" and len(pieces) == 3
        with pytest.raises(InvalidArgument):
            await session.chat("  ", stream=True)  # checked at once, before any request


def test_a_stream_that_fails_raises_the_typed_error(agent_url: str, llm: LLMServer) -> None:
    llm.script(Reply(status=400, error="the model refused the request"))
    with Session(session_id="sfail", agent_url=agent_url) as session:
        with pytest.raises(SessionKitError) as failed:
            list(session.chat("hello", stream=True))
        assert failed.value.reason == "LLM_REJECTED", failed.value
        assert not isinstance(failed.value, ConnectionError)
    assert len(llm.chat_requests) == 1  # a refusal is not retried
    # On the wire: the turn had started, so the refusal came as the stream's `event: error`.
    llm.script(Reply(status=400, error="the model refused the request"))
    body = {"query": "again", "session_id": "sfail", "stream": True}
    raw = httpx.post(f"http://{agent_url}", json=body, timeout=30)
    assert raw.status_code == 200 and "event: error" in raw.text and "LLM_REJECTED" in raw.text


def test_stream_against_a_server_that_answers_json() -> None:
    with (
        SeedExampleServer() as server,
        Session(session_id="plain", agent_url=f"http://127.0.0.1:{server.port}/agent") as session,
    ):
        assert list(session.chat("hi", stream=True)) == ["echo: hi"]
    assert server.received[0]["stream"] is True


def test_a_stream_refused_before_it_starts_is_retried(proxy: FaultyProxy, llm: LLMServer) -> None:
    llm.reply("after one 503")
    proxy.fail(503)
    with Session(session_id="sretry", agent_url=f"{proxy.url}/agent") as session:
        assert "".join(session.chat("hello", stream=True)) == "after one 503"
    first, second = proxy.posts("/agent")
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert second.headers["accept"] == "text/event-stream"
    assert len(llm.chat_requests) == 1


def test_chat_needs_a_remote_session_and_agents_need_grpc(agent_url: str, tmp_path: Path) -> None:
    with Session(session_id="local", storage_path=tmp_path) as local:
        assert local.test_remote_connection() is False
        with pytest.raises(FailedPrecondition, match="agent_url"):
            local.chat("hello")
    with Session(session_id="r", agent_url=agent_url) as remote:
        with pytest.raises(NotImplementedByServer, match="chat"):
            remote.Agent(name="Helper")
        with pytest.raises(InvalidArgument):
            remote.chat("   ")


class SeedExampleServer:
    """The seed's "Remote Agent Deployment" server, as written there: FastAPI, one POST /agent route
    reading ``data["query"]``, no /health; on uvicorn in a thread."""

    def __init__(self) -> None:
        from fastapi import FastAPI

        app = FastAPI()
        self.received: list[dict[str, Any]] = []

        @app.post("/agent")
        async def handle_request(data: dict[str, Any]) -> dict[str, Any]:
            self.received.append(data)
            return {"response": f"echo: {data['query']}"}

        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> SeedExampleServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the example server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def test_a_server_written_like_the_seeds_example() -> None:
    with (
        SeedExampleServer() as server,
        Session(
            session_id="client_session_001", agent_url=f"http://127.0.0.1:{server.port}/agent"
        ) as session,
    ):
        # No /health there: the agent route answering HEAD with 405 (POST only) counts as connected.
        assert session.test_remote_connection() is True
        assert session.chat("Help me analyze this data") == "echo: Help me analyze this data"
    (body,) = server.received
    assert body["messages"] == [{"role": "user", "content": "Help me analyze this data"}]
    assert body["context"] == {"session_id": "client_session_001", "user_id": "default"}
