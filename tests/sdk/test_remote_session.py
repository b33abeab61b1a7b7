"""The SDK's remote mode against a real gateway (uvicorn on a real port) in front of real gRPC services
and a scripted OpenAI-compatible LLM: the seed's remote examples (``Session(agent_url="host:port/agent")``,
test_remote_connection, chat/send_message), state, events, memory and knowledge through the gateway's
REST API, and the retry rules (503/429 with Retry-After retried, 4xx never, ConnectionError when nothing
answers), the faults coming from a small real HTTP server placed in front of the gateway."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from sessionkit import AsyncSession, Session
from sessionkit.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NotImplementedByServer,
    ResourceExhausted,
    SessionKitError,
    Unauthenticated,
)
from sessionkit.remote import RemoteConnectionError, agent_base_url
from sessionkit_server.common.config import ServerSettings
from tests.conftest import free_port
from tests.gateway.test_gateway_support import KEY_A, GatewayThread, gateway_settings, self_signed
from tests.llm_server import LLMServer, Reply
from tests.servers import ServerThread

MODEL = "test-model"


@pytest.fixture(scope="module")
def module_llm() -> Iterator[LLMServer]:
    server = LLMServer(MODEL).start()
    yield server
    server.stop()


@pytest.fixture
def llm(module_llm: LLMServer) -> LLMServer:
    """The module's scripted LLM, with no script or recorded requests left by another test."""
    assert module_llm.pending == 0, "a previous test left scripted replies unused"
    module_llm.requests.clear()
    return module_llm


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory, module_llm: LLMServer) -> Iterator[ServerThread]:
    """Every service in one gRPC server (the embedding model loads once per module)."""
    settings = ServerSettings(
        port=0,
        data_dir=tmp_path_factory.mktemp("remote") / "data",
        services=["state", "memory", "knowledge", "agent"],
        log_format="text",
        llm_base_url=module_llm.base_url,
        llm_model=MODEL,
        llm_api_key="sk-test",
    )
    thread = ServerThread(settings).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def gateway(services: ServerThread) -> Iterator[GatewayThread]:
    thread = GatewayThread(gateway_settings(), services.address).start()
    yield thread
    thread.stop()


@pytest.fixture
def agent_url(gateway: GatewayThread) -> str:
    """The seed's form: host:port/agent, no scheme (http:// is assumed)."""
    return f"127.0.0.1:{gateway.server.port}/agent"


# -- a real HTTP server in front of the gateway that fails on purpose ---------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    time: float


@dataclass
class Fault:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: Forward the request to the gateway first (it is applied), then answer the fault: a lost reply.
    forward: bool = False


class FaultyProxy:
    """Answers the next scripted faults, then forwards every request to the gateway as it is. Records
    what it received, so tests see how often and when the SDK asked. ``health=False``: every
    ``.../health`` path is 404, like a server that has no health route."""

    def __init__(self, target: str, health: bool = True) -> None:
        self.target = target
        self.faults: deque[Fault] = deque()
        self.seen: list[Seen] = []
        self.health = health
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                owner._serve(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.http = httpx.Client(base_url=target, timeout=60)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def fail(
        self, status: int, times: int = 1, headers: dict[str, str] | None = None, forward: bool = False
    ) -> None:
        for _ in range(times):
            body = json.dumps(
                {
                    "error": {
                        "code": status,
                        "status": "X",
                        "reason": "SCRIPTED",
                        "message": f"scripted {status}",
                    }
                }
            ).encode()
            self.faults.append(Fault(status, dict(headers or {}), body, forward))

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        body = handler.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in handler.headers.items()}
        self.seen.append(Seen(handler.command, handler.path, headers, time.monotonic()))
        if self.faults:
            fault = self.faults.popleft()
            if fault.forward:
                self._forward(handler, headers, body)
            status, out_headers, out = (
                fault.status,
                {"content-type": "application/json", **fault.headers},
                fault.body,
            )
        elif handler.path.split("?")[0].endswith("/health") and not self.health:
            status, out_headers, out = 404, {"content-type": "text/plain"}, b"no such route"
        else:
            reply = self._forward(handler, headers, body)
            status, out = reply.status_code, reply.content
            out_headers = {"content-type": reply.headers.get("content-type", "application/json")}
        handler.send_response(status)
        for name, value in out_headers.items():
            handler.send_header(name, value)
        handler.send_header("content-length", str(len(out)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(out)

    def _forward(
        self, handler: BaseHTTPRequestHandler, headers: dict[str, str], body: bytes
    ) -> httpx.Response:
        forwarded = {k: v for k, v in headers.items() if k not in ("host", "content-length", "connection")}
        return self.http.request(handler.command, handler.path, content=body, headers=forwarded)

    def posts(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST" and s.path.split("?")[0] == path]

    def start(self) -> FaultyProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.http.close()


@pytest.fixture
def proxy(gateway: GatewayThread) -> Iterator[FaultyProxy]:
    server = FaultyProxy(gateway.url).start()
    yield server
    server.stop()


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


# -- connection failures ------------------------------------------------------------------------------


def test_nothing_listening() -> None:
    url = f"127.0.0.1:{free_port()}/agent"
    with Session(session_id="s", agent_url=url, timeout=2) as session:
        assert session.test_remote_connection() is False
        started = time.monotonic()
        with pytest.raises(ConnectionError) as failed:
            session.chat("hello")
        # Retried with backoff within the timeout, then the seed's ConnectionError naming the URL.
        assert 0.1 < time.monotonic() - started < 4
        assert f"http://{url}" in str(failed.value)
        assert isinstance(failed.value, RemoteConnectionError)
        with pytest.raises(ConnectionError):
            session.get_state("x")


def test_health_503_is_false(proxy: FaultyProxy, agent_url: str) -> None:
    proxy.fail(503)
    with Session(agent_url=f"{proxy.url}/agent") as session:
        assert session.test_remote_connection() is False  # unhealthy services behind: no fallback
        assert session.test_remote_connection() is True


def test_a_server_without_health_is_probed_like_praisonai_does(proxy: FaultyProxy) -> None:
    # The seed's own example server only has POST /agent: GET /health and /agent/health are 404, and
    # HEAD /agent answers 405 (the route exists, for POST).
    proxy.health = False
    with Session(agent_url=f"{proxy.url}/agent") as session:
        assert session.test_remote_connection() is True
    assert [(s.method, s.path) for s in proxy.seen] == [
        ("GET", "/health"),
        ("GET", "/agent/health"),
        ("HEAD", "/agent"),
    ]


# -- retries ------------------------------------------------------------------------------------------


def test_503_is_retried_with_the_same_idempotency_key(proxy: FaultyProxy, llm: LLMServer) -> None:
    llm.reply("made it")
    proxy.fail(503, times=2)
    with Session(session_id="retry", agent_url=f"{proxy.url}/agent") as session:
        assert session.chat("hello") == "made it"
    attempts = proxy.posts("/agent")
    assert len(attempts) == 3
    keys = {a.headers["idempotency-key"] for a in attempts}
    assert len(keys) == 1 and keys != {""}
    assert len(llm.chat_requests) == 1  # the turn ran once


def test_429_waits_for_retry_after(proxy: FaultyProxy, llm: LLMServer) -> None:
    llm.reply("after the wait")
    proxy.fail(429, headers={"Retry-After": "1"})
    with Session(session_id="rl", agent_url=f"{proxy.url}/agent") as session:
        assert session.chat("hello") == "after the wait"
    first, second = proxy.posts("/agent")
    assert second.time - first.time >= 0.95


def test_the_gateways_own_rate_limit_is_waited_out(services: ServerThread) -> None:
    limited = GatewayThread(
        gateway_settings(rate_limit_per_second=2, rate_limit_burst=1), services.address
    ).start()
    try:
        with Session(session_id="limited", remote_url=f"{limited.url}/agent") as session:
            started = time.monotonic()
            for n in range(3):
                session.set_state("n", n)  # later calls are refused 429 + Retry-After, then retried
            assert session.get_state("n") == 2
            assert time.monotonic() - started >= 1.0
    finally:
        limited.stop()


def test_a_retry_after_past_the_timeout_raises_the_429_at_once(proxy: FaultyProxy) -> None:
    proxy.fail(429, headers={"Retry-After": "30"})
    with Session(session_id="rl-long", agent_url=f"{proxy.url}/agent", timeout=2) as session:
        started = time.monotonic()
        with pytest.raises(ResourceExhausted) as refused:
            session.chat("hello")
        assert time.monotonic() - started < 1.5  # no sleep toward a wait that cannot fit
    assert refused.value.retry_after == pytest.approx(30, abs=1)
    assert len(proxy.posts("/agent")) == 1


@pytest.mark.parametrize(("status", "error"), [(400, InvalidArgument), (404, NotFound)])
def test_4xx_is_never_retried(proxy: FaultyProxy, status: int, error: type[Exception]) -> None:
    proxy.fail(status)
    with Session(session_id="no-retry", agent_url=f"{proxy.url}/agent") as session:
        with pytest.raises(error) as refused:
            session.chat("hello")
        assert not isinstance(refused.value, ConnectionError)
    assert len(proxy.posts("/agent")) == 1


def test_503_until_the_timeout_is_a_connection_error(proxy: FaultyProxy) -> None:
    proxy.fail(503, times=1000)
    with Session(session_id="down", agent_url=f"{proxy.url}/agent", timeout=1.5) as session:
        started = time.monotonic()
        with pytest.raises(ConnectionError) as failed:
            session.chat("hello")
        assert time.monotonic() - started < 3
    assert f"{proxy.url}/agent" in str(failed.value) and "503" in str(failed.value)
    assert len(proxy.posts("/agent")) > 1
    proxy.faults.clear()


def test_an_increment_retried_after_a_503_is_applied_once(proxy: FaultyProxy) -> None:
    with Session(session_id="counter", agent_url=f"{proxy.url}/agent") as session:
        session.set_state("n", 0)
        # The gateway applies the increment, then its reply is lost: a 503 reaches the SDK instead.
        proxy.fail(503, forward=True)
        assert session.increment_state("n") == 1  # retried with the same key: answered, not re-applied
        assert session.get_state("n") == 1
        proxy.fail(503, forward=True)
        assert session.append_state("log", "a") == 1
        proxy.fail(502, forward=True)
        session.add_event("user", "once")
        assert [e.content for e in session.get_events()] == ["once"]
        assert session.get_state("log") == ["a"]
        assert session.increment_state("n") == 2  # a new call: a new key
    patches = [s for s in proxy.seen if s.method == "PATCH"]
    assert len(patches) == 5
    keys = [p.headers["idempotency-key"] for p in patches]
    assert keys[0] == keys[1] and keys[2] == keys[3] and len(set(keys)) == 3
    events = proxy.posts("/v1/sessions/counter/events")
    assert len(events) == 2 and events[0].headers["idempotency-key"] == events[1].headers["idempotency-key"]


def test_every_rest_write_sends_an_idempotency_key(proxy: FaultyProxy, tmp_path: Path) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text("Idempotency keys make retries safe.")
    with Session(session_id="keys", agent_url=f"{proxy.url}/agent") as session:
        session.save_state({"a": 1})
        session.set_state("b", 2)
        session.delete_state("b")
        session.clear_state()
        memory = session.add_memory("a fact worth keeping")
        assert memory is not None
        session.update_memory(memory["id"], "a fact worth keeping, updated")
        session.delete_memory(memory["id"])
        session.clear_memory()
        session.add_knowledge("some text to know")
        session.add_knowledge(str(doc))
        session.delete_knowledge("doc.txt")
        session.clear_knowledge()
    writes = [
        s for s in proxy.seen if s.method in ("PUT", "PATCH", "DELETE", "POST") and "/v1/sessions/" in s.path
    ]
    assert len(writes) == 12, [(w.method, w.path) for w in writes]
    keys = [w.headers.get("idempotency-key", "") for w in writes]
    assert all(keys) and len(set(keys)) == len(keys)


# -- state, events, memory and knowledge over REST ----------------------------------------------------


def test_state_round_trip_matches_grpc(agent_url: str, services: ServerThread) -> None:
    with Session(session_id="customer_support_001", user_id="customer_123", agent_url=agent_url) as remote:
        remote.save_state({"current_issue": "order_12345", "temp:draft": "x", "user:tier": "gold"})
        assert remote.restore_state() == {
            "current_issue": "order_12345",
            "temp:draft": "x",
            "user:tier": "gold",
        }
        assert remote.get_state("current_issue") == "order_12345"
        assert remote.get_state("missing", "fallback") == "fallback"
        remote.set_state("plan", [1, 2])
        remote.set_state("count", 1)
        assert remote.increment_state("count", 2) == 3
        assert remote.append_state("tags", "a", "b") == 2
        assert remote.delete_state("count") is True
        assert remote.delete_state("count") is False
        # The same session over gRPC sees exactly what went through the gateway.
        with Session(
            session_id="customer_support_001", user_id="customer_123", address=services.address
        ) as direct:
            assert direct.restore_state() == {
                "current_issue": "order_12345",
                "user:tier": "gold",
                "plan": [1, 2],
                "tags": ["a", "b"],
            }
        remote.clear_state()
        assert remote.restore_state() == {"user:tier": "gold"}
        event = remote.add_event("user", "noted", metadata={"k": 1})
        assert remote.get_events(1) == [event]
        assert remote.info().session_id == "customer_support_001"
        assert remote.delete() is True


def test_a_key_with_a_slash(agent_url: str) -> None:
    with Session(session_id="slash", agent_url=agent_url) as session:
        session.set_state("path/with/slash", 1)
        assert session.get_state("path/with/slash") == 1
        assert session.increment_state("path/with/slash") == 2
        assert session.append_state("a/b/", "x") == 1
        assert session.restore_state() == {"path/with/slash": 2, "a/b/": ["x"]}
        assert session.delete_state("path/with/slash") is True
        assert session.get_state("path/with/slash") is None


def test_auto_save_off_writes_once(agent_url: str) -> None:
    with Session(session_id="manual_session", agent_url=agent_url, auto_save=False) as session:
        session.set_state("a", 1)
        session.set_state("b", 2)
        assert session.get_state("a") == 1
        session.save_state()
        assert session.restore_state() == {"a": 1, "b": 2}


def test_auto_save_off_deletes_scoped_keys_in_the_same_write(agent_url: str) -> None:
    with Session(session_id="manual_scoped", agent_url=agent_url, auto_save=False) as session:
        session.save_state({"a": 1, "user:x": 1})
        version = session.state_version()
        session.delete_state("user:x")
        session.set_state("b", 2)
        assert session.save_state() == version + 1
        assert session.restore_state() == {"a": 1, "b": 2}


def test_memory_through_rest(agent_url: str) -> None:
    with Session(session_id="mem", user_id="mem_user", agent_url=agent_url) as session:
        stored = session.store_long_memory("The customer prefers email over phone calls", quality_score=0.9)
        assert stored is not None and stored["memory_type"] == "long"
        session.store_short_memory("Currently discussing order 12345")
        hits = session.search_memory("how should we contact the customer?", memory_type="long")
        assert hits[0]["text"] == "The customer prefers email over phone calls"
        context = session.get_memory_context("contact preference", max_items=1)
        assert context == "- The customer prefers email over phone calls (long-term)"
        assert session.get_memory(stored["id"])["text"] == stored["text"]
        assert len(session.list_memories()) == 2
        assert session.clear_memory("short") == 1
        assert session.delete_memory(stored["id"]) is True


def test_knowledge_text_and_file_through_rest(agent_url: str, tmp_path: Path) -> None:
    manual = tmp_path / "technical_manual.md"
    manual.write_text("# Authentication\n\nEvery request needs an API key in the Authorization header.\n")
    with Session(session_id="doc_assistant_001", agent_url=agent_url) as session:
        added = session.add_knowledge("Quick reference: rate limits are 20 requests per second")
        assert added["kind"] == "text" and added["outcome"] == "created"
        uploaded = session.add_knowledge(str(manual))
        assert uploaded["kind"] == "file" and uploaded["source"]["name"] == "technical_manual.md"
        hits = session.search_knowledge("How do I authenticate?", limit=1)
        assert hits[0]["source"]["name"] == "technical_manual.md"
        assert "API key" in hits[0]["text"]
        assert "Knowledge:" in session.get_context("How do I authenticate?")
        assert len(session.list_knowledge()) == 2
        assert session.delete_knowledge("technical_manual.md") is True
        # A source name with '/' (sent as %2F) reaches the route whole.
        session.add_knowledge("Nested guide text", name="guides/nested.md")
        assert session.delete_knowledge("guides/nested.md") is True
        assert session.clear_knowledge() == 1


def test_state_versions_and_restore(agent_url: str, services: ServerThread) -> None:
    with Session(session_id="versions", agent_url=agent_url) as session:
        first = session.save_state({"step": 1})
        session.set_state("step", 2)
        session.set_state("extra", True)
        history = session.state_history()
        assert [v.version for v in history][:3] == [first + 2, first + 1, first]
        assert history[0].operation == "SET" and history[0].key == "extra"
        assert history[-1].state == {"step": 1} and history[-1].time is not None
        restored = session.restore_state_version(first)
        assert restored == first + 3
        assert session.restore_state() == {"step": 1}
        with pytest.raises(NotFound):
            session.restore_state_version(10_000)
        with Session(session_id="versions", address=services.address) as direct:
            assert [v.version for v in direct.state_history()] == [v.version for v in session.state_history()]


async def test_watch_state_over_sse(agent_url: str) -> None:
    import asyncio

    async with AsyncSession(session_id="watched", agent_url=agent_url) as session:
        await session.save_state({"a": 1})
        changes = session.watch_state()
        snapshot = await anext(changes)
        assert snapshot.operation == "SNAPSHOT" and snapshot.state == {"a": 1}
        async with AsyncSession(session_id="watched", agent_url=agent_url) as writer:
            await writer.set_state("b", 2)
        change = await asyncio.wait_for(anext(changes), 10)
        assert (change.operation, change.key, change.value, change.state) == ("SET", "b", 2, {"a": 1, "b": 2})
        await changes.aclose()  # type: ignore[attr-defined]


def test_memory_history_context_and_filtered_list(agent_url: str) -> None:
    with Session(session_id="mem2", user_id="mem2_user", agent_url=agent_url) as session:
        first = session.add_memory("The user likes green tea", topic="drinks")
        second = session.add_memory("The user lives in Lisbon", topic="places")
        assert first is not None and second is not None
        session.update_memory(first["id"], "The user likes jasmine green tea")
        history = session.memory_history(first["id"])
        assert [h["operation"] for h in history] == ["ADD", "UPDATE"]
        assert history[1]["old_text"] == "The user likes green tea"
        listed = session.list_memories(metadata_filter={"topic": "places"})
        assert [m["id"] for m in listed] == [second["id"]]
        # The memory service's own context block (BuildMemoryContext), as over gRPC.
        context = session.get_memory_context("what does the user drink?", max_items=1)
        assert "jasmine green tea" in context and "Lisbon" not in context


def test_add_memories_keeps_each_items_type_quality_and_metadata(
    proxy: FaultyProxy, services: ServerThread
) -> None:
    items: list[Any] = [
        {"text": "The user is allergic to peanuts", "quality_score": 0.95, "metadata": {"topic": "health"}},
        {
            "text": "Currently planning a trip to Porto",
            "memory_type": "short",
            "metadata": {"topic": "travel"},
        },
        "The user prefers window seats",
    ]
    with Session(session_id="batch", user_id="batch_user", agent_url=f"{proxy.url}/agent") as remote:
        added = remote.add_memories(items)
        assert added is not None
        assert [(m["memory_type"], m["metadata"]) for m in added] == [
            ("long", {"topic": "health"}),
            ("short", {"topic": "travel"}),
            ("long", {}),
        ]
        assert added[0]["quality_score"] == pytest.approx(0.95)
        # One request: one transaction on the memory service, as over gRPC.
        assert len(proxy.posts("/v1/sessions/batch/memories/batch")) == 1
        with Session(session_id="batch", user_id="batch_user", address=services.address) as direct:
            stored = {m["text"]: m for m in direct.list_memories()}
        assert stored["Currently planning a trip to Porto"]["memory_type"] == "short"
        assert stored["The user is allergic to peanuts"]["metadata"] == {"topic": "health"}
        # Cleared by metadata over REST too, as over gRPC.
        assert remote.clear_memory(metadata_filter={"topic": "travel"}) == 1
        assert sorted(m["text"] for m in remote.list_memories()) == [
            "The user is allergic to peanuts",
            "The user prefers window seats",
        ]
        with pytest.raises(InvalidArgument, match=r"memories\[1\]"):
            remote.add_memories(["fine", {"text": "x", "memory_type": "forever"}])


def test_calls_the_rest_api_does_not_offer_say_so(agent_url: str) -> None:
    with (
        Session(session_id="unsupported", agent_url=agent_url) as session,
        pytest.raises(NotImplementedByServer, match="address="),
    ):
        session.extract_memories([{"role": "user", "content": "I like tea"}])
