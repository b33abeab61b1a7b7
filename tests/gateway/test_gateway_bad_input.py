"""Bad input through the gateway to the real services (no LLM endpoint configured, so the offline model
would answer; no test here gets that far): every refusal is a 400 naming the field, never a 500, and a
refused request writes nothing (no session, agent or message)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sessionkit_server.common.config import ServerSettings
from tests.gateway.test_gateway_support import GatewayThread, assert_error, gateway_settings
from tests.servers import ServerThread, child_env


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings = ServerSettings(
        port=0,
        data_dir=tmp_path_factory.mktemp("bad-input") / "data",
        services=["state", "memory", "knowledge", "agent"],
        log_format="text",
    )
    thread = ServerThread(settings).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def http(services: ServerThread) -> Iterator[httpx.Client]:
    gateway = GatewayThread(gateway_settings(), services.address).start()
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        yield client
    gateway.stop()


def sessions_of(http: httpx.Client, user_id: str) -> list[str]:
    reply = http.get("/v1/sessions", params={"user_id": user_id})
    assert reply.status_code == 200, reply.text
    return [s["session_id"] for s in reply.json()["sessions"]]


BAD_OPTIONS: dict[str, tuple[dict[str, Any], str]] = {
    "temperature_text": ({"temperature": "hot"}, "temperature"),
    "temperature_high": ({"temperature": 7}, "temperature"),
    "max_tokens_text": ({"max_tokens": "many"}, "max_tokens"),
    "max_tokens_huge": ({"max_tokens": 1e30}, "max_tokens"),
    "max_tokens_negative": ({"max_tokens": -5}, "max_tokens"),
    "busy_timeout_text": ({"busy_timeout": "x"}, "busy_timeout"),
    "busy_timeout_huge": ({"busy_timeout": 1e30}, "busy_timeout"),
    "busy_timeout_negative": ({"busy_timeout": -1}, "busy_timeout"),
    "tool_timeout_list": ({"tool_timeout": []}, "tool_timeout"),
    "metadata_text": ({"metadata": "str"}, "metadata"),
    "metadata_list": ({"metadata": [1, 2]}, "metadata"),
    "model_number": ({"model": 5}, "model"),
    "unknown_model": ({"model": "no-such-model"}, "model"),
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
@pytest.mark.parametrize("with_session_id", [False, True], ids=["new_session", "named_session"])
def test_agent_options_of_the_wrong_type_or_range_are_400_and_write_nothing(
    http: httpx.Client, case: str, with_session_id: bool
) -> None:
    options, field = BAD_OPTIONS[case]
    user = f"u-{case.replace('_', '-')}-{int(with_session_id)}"
    body: dict[str, Any] = {"query": "hello", "user_id": user, "options": options}
    if with_session_id:
        body["session_id"] = "s1"
    reply = http.post("/agent", json=body)
    error = assert_error(reply, 400)
    assert any(v["field"].endswith(f"options.{field}") or v["field"] == field for v in error["violations"]), (
        error
    )
    assert sessions_of(http, user) == []


def test_agent_with_an_unknown_model_in_an_existing_session_stores_no_message(http: httpx.Client) -> None:
    created = http.post("/v1/sessions", params={"user_id": "u-existing"}, json={"session_id": "s1"})
    assert created.status_code in (200, 201), created.text
    reply = http.post(
        "/agent",
        json={"query": "hello", "user_id": "u-existing", "session_id": "s1", "options": {"model": "nope"}},
    )
    assert_error(reply, 400, "UNKNOWN_MODEL")
    events = http.get("/v1/sessions/s1/events", params={"user_id": "u-existing"})
    assert events.status_code == 200, events.text
    assert events.json()["events"] == []


LONE_SURROGATE_BODIES: dict[str, tuple[str, str, str]] = {
    "state_value": ("PUT", "/v1/sessions/s1/state", '{"state": {"a": "\\ud800"}}'),
    "state_key": ("PUT", "/v1/sessions/s1/state", '{"state": {"\\udfff": 1}}'),
    "agent_query": ("POST", "/agent", '{"query": "hi \\ud83d", "user_id": "u-surrogate"}'),
    "memory_text": ("POST", "/v1/sessions/s1/memories", '{"text": "x\\udc00y"}'),
}


@pytest.mark.parametrize("case", LONE_SURROGATE_BODIES)
def test_a_lone_surrogate_in_a_json_body_is_400_naming_the_body(http: httpx.Client, case: str) -> None:
    method, path, body = LONE_SURROGATE_BODIES[case]
    user = "u-surrogate"
    assert http.post("/v1/sessions", params={"user_id": user}, json={"session_id": "s1"}).status_code < 300
    reply = http.request(
        method, path, params={"user_id": user}, content=body, headers={"content-type": "application/json"}
    )
    error = assert_error(reply, 400, "INVALID_REQUEST")
    assert [v["field"].split(".")[0] for v in error["violations"]] == ["body"], error
    # A valid surrogate pair is one character, and fine.
    assert (
        http.put(
            "/v1/sessions/s1/state",
            params={"user_id": user},
            content='{"state": {"a": "\\ud83d\\ude00"}}',
            headers={"content-type": "application/json"},
        ).status_code
        == 200
    )
    assert http.get("/v1/sessions/s1/state", params={"user_id": user}).json()["state"] == {"a": "\U0001f600"}


def test_a_500_says_connection_close_since_the_server_closes_the_connection() -> None:
    """Starlette re-raises an unhandled error after its handler answered, and the server then closes
    the connection: the answer must say so, or a client's next request on it fails with a reset."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from sessionkit_server.gateway import errors

    app = FastAPI()
    errors.install(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        reply = client.get("/boom")
    assert_error(reply, 500, "INTERNAL")
    assert reply.headers["connection"] == "close"


@pytest.mark.parametrize("case", ["knowledge_min_score_nan", "memory_min_score_nan", "memory_max_chars"])
def test_search_bounds_that_are_not_numbers_in_range_are_invalid_argument(
    services: ServerThread, case: str
) -> None:
    """min_score=NaN compared false and silently hid every hit; max_chars=-1 was taken as a limit."""
    import grpc

    from sessionkit.v1 import common_pb2, knowledge_pb2, knowledge_pb2_grpc, memory_pb2, memory_pb2_grpc

    session = common_pb2.SessionRef(app_name="app", user_id="u-bounds", session_id="s1")
    with grpc.insecure_channel(services.address) as channel:
        calls = {
            "knowledge_min_score_nan": lambda: knowledge_pb2_grpc.KnowledgeServiceStub(
                channel
            ).SearchKnowledge(
                knowledge_pb2.SearchKnowledgeRequest(session=session, query="q", min_score=float("nan")),
                timeout=60,
            ),
            "memory_min_score_nan": lambda: memory_pb2_grpc.MemoryServiceStub(channel).SearchMemories(
                memory_pb2.SearchMemoriesRequest(session=session, query="q", min_score=float("nan")),
                timeout=60,
            ),
            "memory_max_chars": lambda: memory_pb2_grpc.MemoryServiceStub(channel).BuildMemoryContext(
                memory_pb2.BuildMemoryContextRequest(session=session, query="q", max_chars=-1), timeout=60
            ),
        }
        with pytest.raises(grpc.RpcError) as info:
            calls[case]()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


API_KEY = "k" * 32
BAD_API_KEYS = {
    "not_json": ("{not json", "api_keys"),
    "one_key_two_tenants": (
        json.dumps([{"key": API_KEY, "tenant": "acme"}, {"key": API_KEY, "tenant": "globex"}]),
        "acme",
    ),
}


@pytest.mark.parametrize("case", BAD_API_KEYS)
def test_bad_api_keys_settings_are_one_error_line(tmp_path: Path, case: str) -> None:
    """A key configured for two tenants was accepted (the last won) and invalid JSON printed a
    129-line traceback: both are one error line and exit code 2, before anything serves."""
    value, named = BAD_API_KEYS[case]
    result = subprocess.run(
        [sys.executable, "-m", "sessionkit.cli", "serve", "--port", "0", "--http-port", "0",
         "--service", "state", "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path, env=child_env(SESSIONKIT_API_KEYS=value), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and named in errors[0], result.stderr
    assert len(result.stderr.splitlines()) <= 3, result.stderr


@pytest.mark.parametrize(
    "url",
    [
        "https://\u0087\u00e6\u00a5\u00fc9\u0010\u0086\u00c5\u008f",
        "http://example.com:99999/",
        "http://a..b/",
    ],
    ids=["control_characters_in_host", "port_out_of_range", "empty_label"],
)
def test_a_knowledge_url_that_is_no_url_is_400_naming_url(http: httpx.Client, url: str) -> None:
    """Found by the gateway fuzz (seed 20261207): the host went to the resolver, whose IDNA encoding
    failed, and AddKnowledgeSource answered INTERNAL; an out-of-range port did the same."""
    reply = http.post(
        "/v1/sessions/s1/knowledge",
        params={"user_id": "u-url"},
        json={"url": url, "chunker": {"type": "semantic"}},
    )
    error = assert_error(reply, 400)
    assert [v["field"] for v in error["violations"]] == ["url"], error
    sources = http.get("/v1/sessions/s1/knowledge", params={"user_id": "u-url"})
    assert sources.status_code == 200 and sources.json()["sources"] == [], sources.text
