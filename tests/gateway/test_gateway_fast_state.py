"""GET /v1/sessions/{id}/state's fast lane (sessionkit_server.gateway.fast_state) answers exactly as the
FastAPI route does: the same status, body and content type for the same request, errors included,
with and without API keys (tenants stay apart). The route itself is reached by adding a query
parameter the fast lane does not take (FastAPI ignores it), so both answers come from one server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sessionkit_server.gateway import fast_state
from sessionkit_server.gateway.fast_state import plain_state_read
from tests.gateway.support import KEYS, gateway_for, state_server
from tests.gateway.test_gateway_support import KEY_A, KEY_B, GatewayThread
from tests.servers import ServerThread


def _both(http: httpx.Client, path: str, params: list[tuple[str, Any]], **extra: Any) -> None:
    """The fast lane's answer and the route's for the same request are the same."""
    fast = http.get(path, params=params, **extra)
    routed = http.get(path, params=[*params, ("via", "route")], **extra)
    assert fast.status_code == routed.status_code, (fast.text, routed.text)
    assert fast.headers["content-type"] == routed.headers["content-type"]
    assert fast.json() == routed.json()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, GatewayThread]]:
    server = state_server(tmp_path_factory.mktemp("fast-state"), api_keys=KEYS)
    gateway = gateway_for(server, api_keys=KEYS)
    yield server, gateway
    gateway.stop()
    server.stop()


def test_the_fast_lane_answers_as_the_route_does(
    keyed: tuple[ServerThread, GatewayThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, gateway = keyed
    taken: list[str] = []

    def counted(scope: Any) -> Any:
        plain = plain_state_read(scope)
        if plain is not None:
            taken.append(scope["path"])
        return plain

    monkeypatch.setattr(fast_state, "plain_state_read", counted)
    a = {"X-API-Key": KEY_A}
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        created = http.post(
            "/v1/sessions?user_id=ada",
            json={"session_id": "s1", "state": {"n": 1, "name": "Ada Lovelace ✓", "tags": ["x"]}},
            headers=a,
        )
        assert created.status_code == 201, created.text
        assert http.put("/v1/sessions/s1/state/user:lang?user_id=ada", json={"value": "en"}, headers=a)
        got = http.get("/v1/sessions/s1/state", params={"user_id": "ada"}, headers=a)
        assert got.json() == {
            "state": {"n": 1, "name": "Ada Lovelace ✓", "tags": ["x"], "user:lang": "en"},
            "version": 2,
        }
        for params in (
            [("user_id", "ada")],
            [("user_id", "ada"), ("keys", "n"), ("keys", "user:lang"), ("keys", "missing")],
            [("user_id", "ada"), ("keys", "")],  # an invalid key: INVALID_ARGUMENT from the service
            [],  # user "default": no such session
            [("user_id", "ada"), ("app", "other")],  # another app of the tenant: no such session
        ):
            _both(http, "/v1/sessions/s1/state", params, headers=a)
        _both(http, "/v1/sessions/nope/state", [("user_id", "ada")], headers=a)
        # Another tenant's key does not reach tenant A's session, on either path.
        _both(http, "/v1/sessions/s1/state", [("user_id", "ada")], headers={"X-API-Key": KEY_B})
        assert http.get("/v1/sessions/s1/state?user_id=ada", headers={"X-API-Key": KEY_B}).status_code == 404
        # The plain requests (the first of each pair, and the two single reads) took the fast lane.
        assert len(taken) == 9
        # Without a key, Admission refuses before either path.
        assert http.get("/v1/sessions/s1/state?user_id=ada").status_code == 401


@pytest.mark.parametrize(
    ("path", "query", "plain"),
    [
        ("/v1/sessions/s1/state", b"", ("s1", "default", None, None)),
        ("/v1/sessions/s1/state", b"user_id=u&app=x&keys=a&keys=b", ("s1", "u", "x", ["a", "b"])),
        ("/v1/sessions/s1/state", b"user_id=u&user_id=v", None),  # repeated: the route decides
        ("/v1/sessions/s1/state", b"user_id=bad%20id", None),  # invalid: the route's 400
        ("/v1/sessions/s1/state", b"app=", None),
        ("/v1/sessions/s1/state", b"page_size=3", None),  # a parameter it does not take
        ("/v1/sessions/a/b/state", b"", None),
        ("/v1/sessions/s1/state/key", b"", None),  # one key's route
        ("/v1/sessions//state", b"", None),
    ],
)
def test_only_the_plain_form_takes_the_fast_lane(
    path: str, query: bytes, plain: tuple[str, str, str | None, list[str] | None] | None
) -> None:
    scope = {"type": "http", "method": "GET", "path": path, "query_string": query, "root_path": ""}
    assert plain_state_read(scope) == plain
    assert plain_state_read({**scope, "method": "HEAD"}) is None


def test_the_fast_lane_is_the_route_on_sqlite_without_keys(tmp_path: Path) -> None:
    server = state_server(tmp_path)
    gateway = gateway_for(server)
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as http:
            http.post("/v1/sessions", json={"session_id": "s", "state": {"k": [1, 2.5, None, True]}})
            _both(http, "/v1/sessions/s/state", [])
            _both(http, "/v1/sessions/s/state", [("app", "default")])
    finally:
        gateway.stop()
        server.stop()
