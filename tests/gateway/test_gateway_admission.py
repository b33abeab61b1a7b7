"""Admission before parsing (issue 14, item 7): the gateway authenticates and rate limits a request from
its headers alone, so an unauthenticated or rate-limited caller cannot make it read or parse a body:
malformed and oversized bodies get 401 / 429, never the 400 / 413 of a parse."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway.support import KEYS, gateway_for, state_server
from tests.gateway.test_gateway_support import KEY_A, KEY_B, GatewayThread, assert_error
from tests.servers import ServerThread


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    thread = state_server(tmp_path_factory.mktemp("admission"), api_keys=KEYS)
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def gateway(server: ServerThread) -> Iterator[GatewayThread]:
    # One token every 100 s: a key's burst of 3 is all it gets in this module.
    thread = gateway_for(
        server, api_keys=KEYS, rate_limit_per_second=0.01, rate_limit_burst=3, http_max_body_bytes=4096
    )
    yield thread
    thread.stop()


MALFORMED = b'{"state": {"a": '


def test_unauthenticated_requests_with_malformed_or_huge_bodies_are_401(gateway: GatewayThread) -> None:
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        json_type = {"content-type": "application/json"}
        malformed = http.put("/v1/sessions/s/state", content=MALFORMED, headers=json_type)
        assert_error(malformed, 401, "API_KEY_MISSING")
        # The refused body is never read: the connection is not kept with its bytes on it.
        assert malformed.headers["connection"] == "close"
        huge = http.put("/v1/sessions/s/state", content=b"x" * 100_000, headers=json_type)
        assert_error(huge, 401, "API_KEY_MISSING")
        wrong = {**json_type, "X-API-Key": "not-a-key-0123456789"}
        assert_error(http.post("/v1/sessions", content=MALFORMED, headers=wrong), 401, "API_KEY_INVALID")
        # Health stays open to probes without a key.
        assert http.get("/health").status_code == 200


def test_a_rate_limited_key_is_429_before_its_body_is_parsed(gateway: GatewayThread) -> None:
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        b = {"X-API-Key": KEY_B, "content-type": "application/json"}
        # The body still counts once the caller is admitted: a malformed one is the caller's 400.
        assert_error(http.put("/v1/sessions/s/state", content=MALFORMED, headers=b), 400)
        assert http.post("/v1/sessions", json={"session_id": "s"}, headers=b).status_code == 201
        assert http.get("/v1/sessions/s/state", headers=b).status_code == 200
        limited = http.put("/v1/sessions/s/state", content=MALFORMED, headers=b)
        assert_error(limited, 429, "RATE_LIMITED")
        assert int(limited.headers["Retry-After"]) >= 1
        assert_error(http.put("/v1/sessions/s/state", content=b"y" * 100_000, headers=b), 429, "RATE_LIMITED")
        # Another key has its own bucket.
        a = {"X-API-Key": KEY_A}
        assert http.get("/v1/sessions", headers=a).status_code == 200


def test_key_guessing_with_bodies_is_rate_limited_by_address(tmp_path: Path, server: ServerThread) -> None:
    gateway = gateway_for(server, api_keys=KEYS, rate_limit_per_second=0.01, rate_limit_burst=2)
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as http:
            statuses = [
                http.post(
                    "/v1/sessions",
                    content=MALFORMED,
                    headers={"X-API-Key": f"guess-{n:016d}", "content-type": "application/json"},
                ).status_code
                for n in range(3)
            ]
            assert statuses == [401, 401, 429]
    finally:
        gateway.stop()
