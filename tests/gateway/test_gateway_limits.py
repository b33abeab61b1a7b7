"""The HTTP gateway in front of a real gRPC server (real uvicorn, real sockets): limits (413, 429 + Retry-
After, 504)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx

from sessionkit_server.common.config import ServerSettings
from tests.gateway.support import KEYS, gateway_for, state_server
from tests.gateway.test_gateway_support import KEY_A, KEY_B, assert_error
from tests.servers import ServerThread

# -- limits ------------------------------------------------------------------------------------------


def test_bodies_over_the_limit_are_413(grpc_server: ServerThread) -> None:
    gateway = gateway_for(grpc_server, http_max_body_bytes=2048)
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as http:
            big = {"role": "user", "content": "x" * 5000}
            error = assert_error(http.post("/v1/sessions/s/events", json=big), 413, "REQUEST_TOO_LARGE")
            assert "2048" in error["message"]

            def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
                yield b'{"role": "user", "content": "'
                for _ in range(10):
                    yield b"y" * 1000
                yield b'"}'

            assert_error(
                http.post(
                    "/v1/sessions/s/events", content=chunks(), headers={"content-type": "application/json"}
                ),
                413,
                "REQUEST_TOO_LARGE",
            )
            http.post("/v1/sessions", json={"session_id": "s"})
            small = http.post("/v1/sessions/s/events", json={"role": "user", "content": "ok"})
            assert small.status_code == 201
    finally:
        gateway.stop()


def test_rate_limit_is_per_key_with_retry_after(tmp_path: Path) -> None:
    server = state_server(tmp_path)
    gateway = gateway_for(server, api_keys=KEYS, rate_limit_per_second=0.5, rate_limit_burst=2)
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as http:
            # Warm the routes and the upstream channel with the other key first: a slow first request
            # (seconds on a loaded machine) would let key A's bucket refill between its requests.
            assert http.get("/v1/sessions", headers={"X-API-Key": KEY_B}).status_code == 200
            a = {"X-API-Key": KEY_A}
            assert http.get("/v1/sessions", headers=a).status_code == 200
            assert http.get("/v1/sessions", headers=a).status_code == 200
            limited = http.get("/v1/sessions", headers=a)
            error = assert_error(limited, 429, "RATE_LIMITED")
            assert limited.headers["Retry-After"] == "2"  # one token every 2 s, rounded up
            assert 1.0 < error["retry_after"] <= 2.0
            # Another key has its own bucket.
            assert http.get("/v1/sessions", headers={"X-API-Key": KEY_B}).status_code == 200
            time.sleep(float(limited.headers["Retry-After"]))
            assert http.get("/v1/sessions", headers=a).status_code == 200
            # Guessing keys is limited too: failed attempts share their address's bucket.
            guesses = [http.get("/v1/sessions", headers={"X-API-Key": f"guess-{n:016d}"}) for n in range(3)]
            assert [g.status_code for g in guesses] == [401, 401, 429]
    finally:
        gateway.stop()
        server.stop()


class SlowGetSession(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Makes GetSession take 3 s (a stuck upstream)."""

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        if handler_call_details.method.endswith("/GetSession"):
            await asyncio.sleep(3)
        return await continuation(handler_call_details)


def test_an_upstream_deadline_is_504_with_a_clear_message(tmp_path: Path) -> None:
    settings = ServerSettings(port=0, data_dir=tmp_path / "data", services=["state"], log_format="text")
    server = ServerThread(settings, interceptors=[SlowGetSession()]).start()
    gateway = gateway_for(server, upstream_timeout_seconds=0.5)
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as http:
            # Warm the channel and the store first: on a loaded machine a cold first call alone can
            # take longer than the 0.5 s upstream deadline this test sets.
            http.get("/v1/sessions/s/state")
            start = time.monotonic()
            error = assert_error(http.get("/v1/sessions/s"), 504, "DEADLINE_EXCEEDED")
            assert time.monotonic() - start < 2.5
            assert "upstream deadline exceeded" in error["message"]
            assert http.get("/v1/sessions/s/state").status_code == 404  # other calls are not slow
    finally:
        gateway.stop()
        server.stop()
