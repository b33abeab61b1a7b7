"""The SDK's remote mode against a real gateway (uvicorn on a real port) in front of real gRPC services and a
scripted OpenAI-compatible LLM (tests/sdk/conftest.py): connection failures and the retry rules (503/429
with Retry-After retried, 4xx never, ConnectionError when nothing answers), the faults coming from a small
real HTTP server placed in front of the gateway."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sessionkit import Session
from sessionkit.errors import InvalidArgument, NotFound, ResourceExhausted
from sessionkit.remote import RemoteConnectionError
from tests.conftest import free_port
from tests.gateway.test_gateway_support import GatewayThread, gateway_settings
from tests.llm_server import LLMServer
from tests.sdk.remote_support import FaultyProxy
from tests.servers import ServerThread

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
