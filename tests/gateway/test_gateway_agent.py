"""POST /agent, the remote agent protocol, end to end: HTTP -> gateway -> the real agent service (gRPC)
-> a real OpenAI-compatible server answering from a script (tests/llm_server.py). Both request bodies,
session creation, agent names, Server-Sent Events, and a client that disconnects cancelling the turn."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sessionkit import Session
from sessionkit_server.common.config import ServerSettings
from tests.gateway.test_gateway_support import GatewayThread, assert_error, gateway_settings
from tests.llm_server import LLMServer, Reply
from tests.servers import ServerThread

MODEL = "test-model"


@pytest.fixture(scope="module")
def module_llm() -> Iterator[LLMServer]:
    server = LLMServer(MODEL).start()
    yield server
    server.stop()


@pytest.fixture
def llm_server(module_llm: LLMServer) -> LLMServer:
    """The module's scripted LLM, with no script or recorded requests left by another test."""
    assert module_llm.pending == 0, "a previous test left scripted replies unused"
    module_llm.requests.clear()
    return module_llm


@pytest.fixture(scope="module")
def agent_server(tmp_path_factory: pytest.TempPathFactory, module_llm: LLMServer) -> Iterator[ServerThread]:
    """One server for the module (the agent's memory loads the embedding model once); tests use
    their own session ids."""
    llm_server = module_llm
    settings = ServerSettings(
        port=0,
        data_dir=tmp_path_factory.mktemp("agent") / "data",
        services=["state", "memory", "knowledge", "agent"],
        log_format="text",
        llm_base_url=llm_server.base_url,
        llm_model=MODEL,
        llm_api_key="sk-test",
    )
    thread = ServerThread(settings).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def http(agent_server: ServerThread) -> Iterator[httpx.Client]:
    gateway = GatewayThread(gateway_settings(), agent_server.address).start()
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        yield client
    gateway.stop()


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """(event, data) pairs of a text/event-stream."""
    event, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def test_the_documented_body(http: httpx.Client, llm_server: LLMServer) -> None:
    llm_server.reply("Hello! How can I help you?")
    body = {
        "messages": [{"role": "user", "content": "Hello"}],
        "context": {"session_id": "session_123", "user_id": "user_456"},
    }
    response = http.post("/agent", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["response"] == "Hello! How can I help you?"
    assert answer["session_id"] == "session_123"
    assert isinstance(answer["metadata"], dict)
    (request,) = llm_server.chat_requests
    assert request.messages[-1] == {"role": "user", "content": "Hello"}
    # The turn is the session's: the next one sees it as history.
    llm_server.reply("You said hello.")
    follow_up = {"messages": [{"role": "user", "content": "What did I say?"}], "context": body["context"]}
    assert http.post("/agent", json=follow_up).json()["response"] == "You said hello."
    contents = [m.get("content") for m in llm_server.chat_requests[-1].messages]
    assert "Hello" in contents and "Hello! How can I help you?" in contents


def test_the_legacy_praisonai_body(http: httpx.Client, llm_server: LLMServer) -> None:
    llm_server.reply("legacy ok")
    response = http.post(
        "/agent", json={"query": "Help me analyze this data", "session_id": "legacy", "user_id": "u1"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["response"] == "legacy ok" and response.json()["session_id"] == "legacy"
    assert llm_server.chat_requests[0].messages[-1]["content"] == "Help me analyze this data"
    # The turn landed in that user's session.
    events = http.get("/v1/sessions/legacy/events", params={"user_id": "u1"}).json()["events"]
    assert [e["content"] for e in events][-2:] == ["Help me analyze this data", "legacy ok"]


def test_no_session_id_creates_a_session_and_returns_its_id(
    http: httpx.Client, llm_server: LLMServer
) -> None:
    llm_server.script("first", "second")
    first = http.post("/agent", json={"messages": [{"role": "user", "content": "one"}]}).json()
    session_id = first["session_id"]
    assert session_id and first["response"] == "first"
    assert http.get(f"/v1/sessions/{session_id}").status_code == 200  # user "default"
    again = http.post("/agent", json={"query": "two", "session_id": session_id}).json()
    assert again["session_id"] == session_id and again["response"] == "second"


def test_a_named_agent_is_created_on_first_use(http: httpx.Client, llm_server: LLMServer) -> None:
    llm_server.script("as researcher", "as assistant")
    named = http.post("/agent", json={"query": "hi", "session_id": "s", "agent": "Researcher"})
    assert named.status_code == 200 and named.json()["response"] == "as researcher"
    default = http.post("/agent", json={"query": "hi", "session_id": "s"})
    assert default.status_code == 200 and default.json()["response"] == "as assistant"


def test_bad_bodies_are_400(http: httpx.Client) -> None:
    error = assert_error(http.post("/agent", json={}), 400, "INVALID_REQUEST")
    assert error["violations"][0]["field"] == "body.query"
    assert_error(http.post("/agent", json={"messages": []}), 400, "INVALID_REQUEST")
    error = assert_error(http.post("/agent", json={"query": "hi", "context": {"session_id": "../x"}}), 400)
    assert error["violations"][0]["field"] == "body.context.session_id"
    assert_error(http.post("/agent", json={"messages": "hello"}), 400, "INVALID_REQUEST")
    assert_error(http.post("/agent", content=b"[1, 2", headers={"content-type": "application/json"}), 400)


@pytest.mark.parametrize("how", ["body", "accept"])
def test_streaming_answers_server_sent_events(http: httpx.Client, llm_server: LLMServer, how: str) -> None:
    llm_server.script(Reply(content="Streaming works fine", chunks=["Streaming ", "works ", "fine"]))
    body: dict[str, Any] = {"query": "stream please", "session_id": "st"}
    headers = {}
    if how == "body":
        body["stream"] = True
    else:
        headers["Accept"] = "text/event-stream"
    with http.stream("POST", "/agent", json=body, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response.iter_lines()))
    deltas = "".join(data["text"] for event, data in events if event == "delta")
    assert deltas == "Streaming works fine"
    final = [data for event, data in events if event == "result"]
    assert len(final) == 1 and events[-1][0] == "result"
    assert final[0]["response"] == "Streaming works fine" and final[0]["session_id"] == "st"
    assert isinstance(final[0]["metadata"], dict)


def test_a_client_that_disconnects_cancels_the_turn(http: httpx.Client, llm_server: LLMServer) -> None:
    # The model takes 20 s to answer; the client leaves while it is thinking.
    llm_server.script(Reply(content="too late", delay=20))
    with http.stream("POST", "/agent", json={"query": "slow", "session_id": "c", "stream": True}) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines) == "event: started"
        assert json.loads(next(lines)[5:])["session_id"] == "c"
        deadline = time.monotonic() + 15
        while not llm_server.chat_requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert llm_server.chat_requests, "the turn never reached the model"
    # Once cancelled, the conversation is free at once: a turn that refuses to wait for a busy
    # conversation goes through (it would be 409 CONVERSATION_BUSY for 20 s otherwise).
    llm_server.reply("the next turn")
    deadline = time.monotonic() + 10
    while True:
        reply = http.post("/agent", json={"query": "next", "session_id": "c", "options": {"busy": "fail"}})
        if reply.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert reply.status_code == 200, reply.text
    assert reply.json()["response"] == "the next turn"
    contents = [e["content"] for e in http.get("/v1/sessions/c/events").json()["events"]]
    assert "too late" not in contents


def test_an_idempotency_key_runs_the_turn_once(http: httpx.Client, llm_server: LLMServer) -> None:
    llm_server.reply("only once")
    headers = {"Idempotency-Key": "turn-42"}
    body = {"query": "charge my card", "session_id": "idem"}
    first = http.post("/agent", json=body, headers=headers)
    second = http.post("/agent", json=body, headers=headers)
    assert first.status_code == second.status_code == 200, second.text
    assert first.json()["response"] == second.json()["response"] == "only once"
    assert len(llm_server.chat_requests) == 1


def test_a_failure_after_the_stream_started_is_an_error_event(
    http: httpx.Client, llm_server: LLMServer
) -> None:
    llm_server.fail(401, "bad key")  # the model refuses: not retried
    with http.stream("POST", "/agent", json={"query": "hi", "session_id": "e", "stream": True}) as response:
        assert response.status_code == 200
        events = list(sse_events(response.iter_lines()))
    assert events[0][0] == "started"
    kind, data = events[-1]
    assert kind == "error" and set(data["error"]) >= {"code", "status", "reason", "message"}
    assert data["error"]["code"] >= 400 and "Traceback" not in json.dumps(data)


def test_praisonai_remote_session_probes_succeed(http: httpx.Client) -> None:
    """PraisonAI's Session(agent_url=".../agent") checks GET <agent_url>/health, then HEAD <agent_url>
    (200 or 405 count as connected)."""
    assert http.get("/agent/health").status_code == 200
    assert http.get("/agent/health").json()["status"] == "ok"
    assert http.head("/agent").status_code == 405


def test_a_quiet_turn_carries_heartbeats_and_the_sdk_waits_through_them(
    agent_server: ServerThread, llm_server: LLMServer
) -> None:
    """While the model thinks, the stream is kept audibly alive (SESSIONKIT_SSE_HEARTBEAT_SECONDS): the
    SDK, which gives up on a stream silent for 3 intervals (0.9 s here), waits through a 1.5 s pause."""
    gateway = GatewayThread(gateway_settings(sse_heartbeat_seconds=0.3), agent_server.address).start()
    try:
        llm_server.script(Reply(content="worth the wait", delay=1.5))
        body = {"query": "think", "session_id": "hb", "stream": True}
        with (
            httpx.Client(base_url=gateway.url, timeout=60) as http,
            http.stream("POST", "/agent", json=body) as reply,
        ):
            assert reply.headers["sessionkit-heartbeat"] == "0.3"
            lines = list(reply.iter_lines())
        assert lines.count(": heartbeat") >= 3, lines
        events = list(sse_events(iter(lines)))
        assert events[-1][0] == "result" and events[-1][1]["response"] == "worth the wait"
        llm_server.script(Reply(content="still here", delay=1.5))
        with Session("hb2", agent_url=f"{gateway.url}/agent") as session:
            assert "".join(session.chat("again", stream=True)) == "still here"
    finally:
        gateway.stop()
