"""The HTTP gateway in front of a real gRPC server (real uvicorn, real sockets): REST round trips on
SQLite and PostgreSQL, the one error shape and its statuses, API keys and tenant isolation (also when
going around the gateway to gRPC), limits (413, 429 + Retry-After, 504), TLS, and /health."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2

from sessionkit.errors import FailedPrecondition
from sessionkit.v1 import common_pb2, state_pb2, state_pb2_grpc
from sessionkit_server.common.auth import server_interceptors
from sessionkit_server.common.config import ServerSettings
from sessionkit_server.gateway.server import GatewayServer, local_client_settings
from tests.conftest import free_port
from tests.gateway.test_gateway_support import (
    KEY_A,
    KEY_B,
    GatewayThread,
    assert_error,
    gateway_settings,
    self_signed,
)
from tests.servers import ServerThread

KEYS = {KEY_A: "acme", KEY_B: "globex"}


def state_server(tmp_path: Path, database_url: str = "", **extra: Any) -> ServerThread:
    """A real gRPC server with the state service; with api_keys, checking them as `serve` does."""
    settings = ServerSettings(
        port=0,
        data_dir=tmp_path / "data",
        database_url=database_url,
        services=["state"],
        log_format="text",
        **extra,
    )
    return ServerThread(settings, interceptors=server_interceptors(settings.api_keys)).start()


@pytest.fixture
def backend(database_url: str, tmp_path: Path) -> Iterator[ServerThread]:
    """A state server on each backend (SQLite file, PostgreSQL)."""
    thread = state_server(tmp_path, database_url)
    yield thread
    thread.stop()


@pytest.fixture
def grpc_server(tmp_path: Path) -> Iterator[ServerThread]:
    thread = state_server(tmp_path)
    yield thread
    thread.stop()


def gateway_for(server: ServerThread, **settings: Any) -> GatewayThread:
    return GatewayThread(gateway_settings(**settings), server.address).start()


@pytest.fixture
def gateway(grpc_server: ServerThread) -> Iterator[GatewayThread]:
    thread = gateway_for(grpc_server)
    yield thread
    thread.stop()


@pytest.fixture
def http(gateway: GatewayThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        yield client


# -- REST round trips --------------------------------------------------------------------------------


def test_sessions_state_and_events_round_trip(backend: ServerThread) -> None:
    gateway = gateway_for(backend)
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as http:
            created = http.post("/v1/sessions?user_id=alice", json={"session_id": "s1", "state": {"n": 1}})
            assert created.status_code == 201, created.text
            assert created.json()["created"] is True and created.json()["session_id"] == "s1"
            again = http.post("/v1/sessions?user_id=alice", json={"session_id": "s1"})
            assert again.status_code == 200 and again.json()["created"] is False
            generated = http.post("/v1/sessions?user_id=alice", json={}).json()["session_id"]
            assert generated and generated != "s1"
            listed = http.get("/v1/sessions", params={"user_id": "alice"}).json()
            assert sorted(s["session_id"] for s in listed["sessions"]) == sorted(["s1", generated])

            base = "/v1/sessions/s1"
            assert (
                http.put(f"{base}/state/theme?user_id=alice", json={"value": "dark"}).json()["version"] == 2
            )
            assert http.patch(f"{base}/state/n?user_id=alice", json={"increment": 2}).json() == {
                "version": 3,
                "value": 3.0,
                "length": None,
            }
            assert (
                http.patch(f"{base}/state/tags?user_id=alice", json={"append": ["a", "b"]}).json()["length"]
                == 2
            )
            assert http.get(f"{base}/state?user_id=alice").json() == {
                "state": {"n": 3, "theme": "dark", "tags": ["a", "b"]},
                "version": 4,
            }
            assert http.get(f"{base}/state/theme?user_id=alice").json() == {
                "key": "theme",
                "value": "dark",
                "version": 4,
            }
            assert http.get(f"{base}/state", params={"user_id": "alice", "keys": ["n", "tags"]}).json()[
                "state"
            ] == {"n": 3, "tags": ["a", "b"]}
            assert http.delete(f"{base}/state/theme?user_id=alice").json() == {"version": 5, "existed": True}
            assert_error(http.get(f"{base}/state/theme?user_id=alice"), 404, "STATE_KEY_NOT_FOUND")
            # Compare-and-set: a stale expected_version is a 409 naming the current version.
            stale = http.put(f"{base}/state?user_id=alice", json={"state": {"x": 1}, "expected_version": 2})
            error = assert_error(stale, 409, "STATE_CONFLICT")
            assert error["metadata"]["current_version"] == "5"
            assert http.put(
                f"{base}/state?user_id=alice", json={"state": {"x": 1}, "expected_version": 5}
            ).json() == {"version": 6}
            assert http.get(f"{base}/state?user_id=alice").json()["state"] == {"x": 1}
            assert http.delete(f"{base}/state?user_id=alice").json()["version"] == 7
            assert http.get(f"{base}/state?user_id=alice").json()["state"] == {}

            event = http.post(
                f"{base}/events?user_id=alice", json={"role": "user", "content": "hi", "metadata": {"k": 1}}
            )
            assert event.status_code == 201 and event.json()["id"] == 1
            http.post(f"{base}/events?user_id=alice", json={"role": "assistant", "content": "hello"})
            events = http.get(f"{base}/events?user_id=alice").json()["events"]
            assert [(e["role"], e["content"]) for e in events] == [("user", "hi"), ("assistant", "hello")]
            assert events[0]["metadata"] == {"k": 1}
            assert [
                e["content"] for e in http.get(f"{base}/events?user_id=alice&tail=1").json()["events"]
            ] == ["hello"]

            info = http.get(f"{base}?user_id=alice").json()
            assert info["event_count"] == 2 and info["user_id"] == "alice" and info["version"] == 7
            # Another user's session of the same id is another session.
            assert_error(http.get(f"{base}?user_id=bob"), 404, "SESSION_NOT_FOUND")
            assert http.delete(f"{base}?user_id=alice").json() == {"deleted": True}
            assert_error(http.get(f"{base}?user_id=alice"), 404, "SESSION_NOT_FOUND")
            assert http.delete(f"{base}?user_id=alice&allow_missing=true").json() == {"deleted": False}
    finally:
        gateway.stop()


def test_apps_are_separate_namespaces_without_auth(http: httpx.Client) -> None:
    for app in ("one", "two"):
        http.post(f"/v1/sessions?app={app}", json={"session_id": "s"})
    http.put("/v1/sessions/s/state/k?app=one", json={"value": 1})
    http.put("/v1/sessions/s/state/k?app=two", json={"value": 2})
    assert http.get("/v1/sessions/s/state/k?app=one").json()["value"] == 1
    assert http.get("/v1/sessions/s/state/k?app=two").json()["value"] == 2
    assert http.get("/v1/sessions/s/state/k").status_code == 404  # the default app has no such session


# -- the error shape ---------------------------------------------------------------------------------


def test_invalid_requests_are_400_in_the_one_shape(http: httpx.Client) -> None:
    error = assert_error(http.get("/v1/sessions/bad%20id/state"), 400, "INVALID_REQUEST")
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["violations"][0]["field"] == "path.session_id"
    error = assert_error(
        http.post(
            "/v1/sessions/s/events", content=b"{not json", headers={"content-type": "application/json"}
        ),
        400,
        "INVALID_REQUEST",
    )
    assert error["violations"]
    error = assert_error(http.post("/v1/sessions", json={"session_id": "s", "colour": "red"}), 400)
    assert any(v["field"] == "body.colour" for v in error["violations"])
    error = assert_error(http.patch("/v1/sessions/s/state/k", json={"increment": 1, "append": [1]}), 400)
    assert error["violations"] == [{"field": "body", "description": "exactly one of increment, append"}]
    # A key the state service refuses (a scope prefix alone): its InvalidArgument, mapped by the table.
    http.post("/v1/sessions", json={"session_id": "s"})
    assert_error(http.put("/v1/sessions/s/state/user:", json={"value": 1}), 400, "INVALID_ARGUMENT")


def test_unknown_routes_and_methods_answer_the_one_shape(http: httpx.Client) -> None:
    assert_error(http.get("/v2/nothing"), 404, "ROUTE_NOT_FOUND")
    assert_error(http.put("/health"), 405, "METHOD_NOT_ALLOWED")


def test_a_service_not_served_is_501(http: httpx.Client) -> None:
    # The server behind serves only the state service.
    assert_error(http.post("/v1/sessions/s/memories", json={"text": "hello"}), 501, "UNIMPLEMENTED")


# -- /health -----------------------------------------------------------------------------------------


def test_health_is_200_when_serving_and_503_otherwise(grpc_server: ServerThread, http: httpx.Client) -> None:
    ok = http.get("/health")
    assert ok.status_code == 200 and ok.json()["status"] == "ok"
    assert ok.json()["services"]["state"] == "SERVING"
    assert ok.json()["services"]["memory"] == "SERVICE_UNKNOWN"  # not served here; does not fail health

    assert grpc_server.host is not None
    grpc_server.call(grpc_server.host.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING))
    down = http.get("/health")
    assert down.status_code == 503 and down.json()["status"] == "unavailable"


def test_health_is_503_when_nothing_answers(tmp_path: Path) -> None:
    nothing = f"127.0.0.1:{free_port()}"
    gateway = GatewayThread(gateway_settings(), nothing).start()
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as http:
            response = http.get("/health")
            assert response.status_code == 503
            assert response.json()["services"]["state"] == "UNREACHABLE"
            # A call that needs the services says they are unavailable (after the SDK's retries).
            assert_error(http.get("/v1/sessions/s/state"), 503, "UNAVAILABLE")
    finally:
        gateway.stop()


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
            start = time.monotonic()
            error = assert_error(http.get("/v1/sessions/s"), 504, "DEADLINE_EXCEEDED")
            assert time.monotonic() - start < 2.5
            assert "upstream deadline exceeded" in error["message"]
            assert http.get("/v1/sessions/s/state").status_code == 404  # other calls are not slow
    finally:
        gateway.stop()
        server.stop()


# -- API keys and tenants ----------------------------------------------------------------------------


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[tuple[ServerThread, GatewayThread]]:
    """A gRPC server and a gateway that both check KEYS."""
    server = state_server(tmp_path, api_keys=KEYS)
    gateway = gateway_for(server, api_keys=KEYS)
    yield server, gateway
    gateway.stop()
    server.stop()


def test_requests_without_a_valid_key_are_401(keyed: tuple[ServerThread, GatewayThread]) -> None:
    _, gateway = keyed
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        assert_error(http.get("/v1/sessions"), 401, "API_KEY_MISSING")
        assert_error(
            http.get("/v1/sessions", headers={"X-API-Key": "not-a-key-0123456789"}), 401, "API_KEY_INVALID"
        )
        assert_error(
            http.get("/v1/sessions", headers={"Authorization": f"Basic {KEY_A}"}), 401, "API_KEY_MALFORMED"
        )
        assert_error(http.post("/agent", json={"query": "hi"}), 401)
        assert http.get("/v1/sessions", headers={"Authorization": f"Bearer {KEY_A}"}).status_code == 200
        assert http.get("/v1/sessions", headers={"X-API-Key": KEY_A}).status_code == 200
        # Health and the API description need no key (probes, client generators).
        assert http.get("/health").status_code == 200
        assert http.get("/openapi.json").status_code == 200


def test_a_key_reaches_only_its_own_tenant(keyed: tuple[ServerThread, GatewayThread]) -> None:
    _, gateway = keyed
    a, b = {"X-API-Key": KEY_A}, {"Authorization": f"Bearer {KEY_B}"}
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        for app in ("", "&app=web"):
            assert http.post(
                f"/v1/sessions?user_id=u{app}", json={"session_id": "shared"}, headers=a
            ).is_success
        assert http.put(
            "/v1/sessions/shared/state/secret?user_id=u", json={"value": "a's"}, headers=a
        ).is_success
        assert http.put(
            "/v1/sessions/shared/state/secret?user_id=u&app=web", json={"value": "a's web"}, headers=a
        ).is_success
        # The same ids, named by the other tenant, are the other tenant's (empty) namespace.
        assert_error(http.get("/v1/sessions/shared/state/secret?user_id=u", headers=b), 404)
        assert_error(http.get("/v1/sessions/shared/state/secret?user_id=u&app=web", headers=b), 404)
        assert http.get("/v1/sessions?user_id=u", headers=b).json()["sessions"] == []
        assert http.delete("/v1/sessions/shared?user_id=u&allow_missing=true", headers=b).json() == {
            "deleted": False
        }
        # An app name cannot climb out of the tenant: ':' (the separator) is not allowed in ?app=.
        assert_error(http.get("/v1/sessions?user_id=u&app=acme:web", headers=b), 400, "INVALID_REQUEST")
        # Tenant A still has both.
        assert http.get("/v1/sessions/shared/state/secret?user_id=u", headers=a).json()["value"] == "a's"
        assert (
            http.get("/v1/sessions/shared/state/secret?user_id=u&app=web", headers=a).json()["value"]
            == "a's web"
        )
        listed = http.get("/v1/sessions?user_id=u", headers=a).json()["sessions"]
        assert [(s["session_id"], s["app"]) for s in listed] == [("shared", None)]


def test_going_around_the_gateway_checks_the_same_keys(keyed: tuple[ServerThread, GatewayThread]) -> None:
    server, _ = keyed

    def get_state(app_name: str, key: str | None) -> grpc.StatusCode:
        metadata = [("x-api-key", key)] if key else []
        with grpc.insecure_channel(server.address) as channel:
            stub = state_pb2_grpc.StateServiceStub(channel)  # type: ignore[no-untyped-call]
            ref = common_pb2.SessionRef(app_name=app_name, user_id="u", session_id="s")
            try:
                stub.CreateSession(
                    state_pb2.CreateSessionRequest(session=ref, get_if_exists=True), metadata=metadata
                )
            except grpc.RpcError as error:
                return error.code()  # type: ignore[no-any-return]
            return grpc.StatusCode.OK

    assert get_state("acme", None) == grpc.StatusCode.UNAUTHENTICATED
    assert get_state("acme", "wrong-key-0123456789") == grpc.StatusCode.UNAUTHENTICATED
    assert get_state("acme", KEY_A) == grpc.StatusCode.OK
    assert get_state("acme:web", KEY_A) == grpc.StatusCode.OK
    assert get_state("globex", KEY_A) == grpc.StatusCode.PERMISSION_DENIED
    assert get_state("acme-evil", KEY_A) == grpc.StatusCode.PERMISSION_DENIED
    assert get_state("", KEY_A) == grpc.StatusCode.PERMISSION_DENIED  # "" is the "default" app
    with grpc.insecure_channel(server.address) as channel:
        stub = state_pb2_grpc.StateServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            stub.ListSessions(
                state_pb2.ListSessionsRequest(app_name="globex"), metadata=[("x-api-key", KEY_A)]
            )
            raise AssertionError("listing another tenant's sessions was allowed")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        # Health needs no key (probes).
        from grpc_health.v1 import health_pb2_grpc

        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_the_services_refusal_reaches_the_client_as_403(tmp_path: Path) -> None:
    """A gateway whose key table disagrees with the services' (key A is tenant 'globex' there): the
    services refuse, and the gateway answers their PermissionDenied as 403 in the one shape."""
    server = state_server(tmp_path, api_keys={KEY_A: "globex"})
    gateway = gateway_for(server, api_keys=KEYS)
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as http:
            error = assert_error(
                http.get("/v1/sessions", headers={"X-API-Key": KEY_A}), 403, "PERMISSION_DENIED"
            )
            assert "globex" in error["message"]
    finally:
        gateway.stop()
        server.stop()


def test_keys_are_kept_only_as_digests(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text('[{"key": "from-a-file-0123456789", "tenant": "initech"}]')
    settings = ServerSettings(api_keys=KEYS, api_keys_file=keys_file)
    assert len(settings.api_keys) == 3
    assert set(settings.api_keys.values()) == {"acme", "globex", "initech"}
    assert not any(KEY_A in digest or "from-a-file" in digest for digest in settings.api_keys)
    assert KEY_A not in repr(settings)
    with pytest.raises(ValueError, match="tenant"):
        ServerSettings(api_keys={KEY_A: "bad:tenant"})
    with pytest.raises(ValueError, match="at least 16"):
        ServerSettings(api_keys={"short": "acme"})


# -- binding, TLS --------------------------------------------------------------------------------------


def test_auth_off_only_on_loopback_and_the_log_says_so(
    grpc_server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    async def start(settings: ServerSettings) -> GatewayServer:
        server = GatewayServer.for_target(
            settings, grpc_server.address, local_client_settings(grpc_server.address)
        )
        await server.start()
        return server

    async def scenario() -> None:
        with pytest.raises(FailedPrecondition, match="without API keys"):
            await start(gateway_settings(http_host="0.0.0.0"))
        with caplog.at_level(logging.WARNING, logger="sessionkit.auth"):
            server = await start(gateway_settings())
        await server.stop()
        assert any("authentication is OFF" in r.getMessage() for r in caplog.records)
        server = await start(gateway_settings(http_host="0.0.0.0", api_keys=KEYS))
        await server.stop()

    asyncio.run(scenario())


def test_tls_with_a_self_signed_certificate(grpc_server: ServerThread, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    gateway = gateway_for(grpc_server, tls_cert_file=cert, tls_key_file=key)
    try:
        assert gateway.url.startswith("https://")
        trusting = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=gateway.url, verify=trusting, timeout=30) as https:
            assert https.get("/health").status_code == 200
            assert https.post("/v1/sessions", json={"session_id": "s"}).status_code == 201
            assert https.put("/v1/sessions/s/state/k", json={"value": 1}).json() == {"version": 1}
        with httpx.Client(base_url=gateway.url, timeout=30) as untrusting, pytest.raises(httpx.ConnectError):
            untrusting.get("/health")  # the system CAs do not trust a self-signed certificate
        plain = gateway.url.replace("https://", "http://")
        with httpx.Client(base_url=plain, timeout=30) as http, pytest.raises(httpx.HTTPError):
            http.get("/health")
    finally:
        gateway.stop()


# -- memories and knowledge ----------------------------------------------------------------------------


@pytest.fixture
def retrieval_gateway(database_url: str, tmp_path: Path) -> Iterator[GatewayThread]:
    """State, memory and knowledge on each backend, behind a gateway."""
    settings = ServerSettings(
        port=0,
        data_dir=tmp_path / "data",
        database_url=database_url,
        services=["state", "memory", "knowledge"],
        log_format="text",
    )
    server = ServerThread(settings).start()
    gateway = gateway_for(server)
    yield gateway
    gateway.stop()
    server.stop()


def test_memories_and_knowledge_round_trip(retrieval_gateway: GatewayThread, tmp_path: Path) -> None:
    with httpx.Client(base_url=retrieval_gateway.url, timeout=120) as http:
        http.post("/v1/sessions?user_id=ann", json={"session_id": "s"})
        base = "/v1/sessions/s"
        tea = http.post(
            f"{base}/memories?user_id=ann", json={"text": "Ann drinks green tea", "metadata": {"t": 1}}
        )
        assert tea.status_code == 201, tea.text
        tea_id = tea.json()["id"]
        short = http.post(
            f"{base}/memories?user_id=ann", json={"text": "Asked about trains", "memory_type": "short"}
        )
        assert short.json()["memory_type"] == "short"
        hits = http.post(
            f"{base}/memories/search?user_id=ann", json={"query": "what does Ann drink?"}
        ).json()["hits"]
        assert hits[0]["id"] == tea_id and hits[0]["score"] > 0 and set(hits[0]["scores"]) >= {"semantic"}
        assert {m["text"] for m in http.get(f"{base}/memories?user_id=ann").json()["memories"]} == {
            "Ann drinks green tea",
            "Asked about trains",
        }
        assert [
            m["text"] for m in http.get(f"{base}/memories?user_id=ann&memory_type=long").json()["memories"]
        ] == ["Ann drinks green tea"]
        updated = http.patch(
            f"{base}/memories/{tea_id}?user_id=ann", json={"text": "Ann drinks black tea"}
        ).json()
        assert updated["text"] == "Ann drinks black tea" and updated["revision"] == 2
        assert http.get(f"{base}/memories/{tea_id}?user_id=ann").json()["text"] == "Ann drinks black tea"
        assert_error(http.get(f"{base}/memories/{tea_id}?user_id=bob"), 404, "MEMORY_NOT_FOUND")
        assert http.delete(f"{base}/memories/{tea_id}?user_id=ann").json() == {"deleted": True}
        assert http.delete(f"{base}/memories?user_id=ann").json() == {"deleted_count": 1}
        assert http.get(f"{base}/memories?user_id=ann").json()["memories"] == []

        text = http.post(
            f"{base}/knowledge?user_id=ann", json={"text": "The Eiffel Tower is in Paris.", "name": "paris"}
        )
        assert text.status_code == 201 and text.json()["outcome"] == "created", text.text
        upload = http.post(
            f"{base}/knowledge/files?user_id=ann",
            files={
                "file": ("guide.md", b"# Guide\n\nThe gateway answers HTTP on port 8080.\n", "text/markdown")
            },
            data={"metadata": '{"team": "docs"}'},
        )
        assert upload.status_code == 201, upload.text
        assert upload.json()["source"]["name"] == "guide.md" and upload.json()["source"]["metadata"] == {
            "team": "docs"
        }
        hits = http.post(f"{base}/knowledge/search?user_id=ann", json={"query": "which port?"}).json()
        hit = hits["hits"][0]
        assert hit["source"]["name"] == "guide.md" and "8080" in hit["text"]
        # Text that names a file on the gateway's host is text: the gateway never reads its own disk.
        secret = tmp_path / "secret.txt"
        secret.write_text("TOP SECRET")
        as_text = http.post(
            f"{base}/knowledge?user_id=ann", json={"text": str(secret), "name": "path"}
        ).json()
        assert as_text["kind"] == "text" and as_text["source"]["size_bytes"] == len(str(secret))
        names = sorted(s["name"] for s in http.get(f"{base}/knowledge?user_id=ann").json()["sources"])
        assert names == ["guide.md", "paris", "path"]
        assert http.delete(f"{base}/knowledge/paris?user_id=ann").json() == {
            "deleted": True,
            "deleted_chunk_count": 1,
        }
        assert_error(http.delete(f"{base}/knowledge/paris?user_id=ann"), 404, "KNOWLEDGE_SOURCE_NOT_FOUND")
        assert http.delete(f"{base}/knowledge?user_id=ann").json() == {"deleted_source_count": 2}
        # The SSRF guard of the knowledge service answers through the one mapping.
        refused = http.post(f"{base}/knowledge?user_id=ann", json={"url": "http://127.0.0.1:1/x"})
        assert_error(refused, 403, "URL_NOT_ALLOWED")
        assert_error(
            http.post(f"{base}/knowledge?user_id=ann", json={"text": "a", "url": "http://x.org"}), 400
        )


def test_memory_context_history_filter_and_idempotent_writes(retrieval_gateway: GatewayThread) -> None:
    with httpx.Client(base_url=retrieval_gateway.url, timeout=120) as http:
        base = "/v1/sessions/s"
        http.post("/v1/sessions?user_id=ann", json={"session_id": "s"})
        once = {"Idempotency-Key": "add-tea-1"}
        tea = http.post(f"{base}/memories?user_id=ann", json={"text": "Ann drinks green tea"}, headers=once)
        again = http.post(f"{base}/memories?user_id=ann", json={"text": "Ann drinks green tea"}, headers=once)
        assert tea.status_code == again.status_code == 201 and again.json() == tea.json()
        tea_id = tea.json()["id"]
        http.post(
            f"{base}/memories?user_id=ann",
            json={"text": "Ann lives in Porto", "metadata": {"topic": "places"}},
        )
        edit = {"Idempotency-Key": "edit-tea-1"}
        for _ in range(2):
            updated = http.patch(
                f"{base}/memories/{tea_id}?user_id=ann", json={"text": "Ann drinks oolong tea"}, headers=edit
            )
            assert updated.json()["revision"] == 2  # the repeat is answered, not applied again
        history = http.get(f"{base}/memories/{tea_id}/history?user_id=ann").json()["changes"]
        assert [c["operation"] for c in history] == ["ADD", "UPDATE"]
        assert (
            history[1]["old_text"] == "Ann drinks green tea"
            and history[1]["new_text"] == "Ann drinks oolong tea"
        )
        assert http.get(f"{base}/memories/m-missing/history?user_id=ann").json() == {"changes": []}
        filtered = http.get(
            f"{base}/memories", params={"user_id": "ann", "metadata_filter": '{"topic": "places"}'}
        )
        assert [m["text"] for m in filtered.json()["memories"]] == ["Ann lives in Porto"]
        assert_error(
            http.get(f"{base}/memories", params={"user_id": "ann", "metadata_filter": "[1]"}),
            400,
            "INVALID_REQUEST",
        )
        context = http.post(
            f"{base}/memories/context?user_id=ann", json={"query": "what does Ann drink?", "max_items": 1}
        )
        assert context.status_code == 200, context.text
        assert "oolong" in context.json()["context"] and "Porto" not in context.json()["context"]
        assert [h["id"] for h in context.json()["hits"]] == [tea_id]
        assert_error(http.post(f"{base}/memories/context?user_id=ann", json={"query": ""}), 400)
        # Knowledge writes with a key: a repeated delete answers as the first time.
        http.post(f"{base}/knowledge?user_id=ann", json={"text": "Porto is in Portugal.", "name": "porto"})
        drop = {"Idempotency-Key": "drop-porto"}
        first = http.delete(f"{base}/knowledge/porto?user_id=ann", headers=drop)
        assert first.json() == http.delete(f"{base}/knowledge/porto?user_id=ann", headers=drop).json()
        assert first.json()["deleted"] is True


def test_idempotency_keys_keys_with_slashes_versions_and_watch(http: httpx.Client) -> None:
    base = "/v1/sessions/s"
    http.post("/v1/sessions", json={"session_id": "s"})
    key = {"Idempotency-Key": "inc-1"}
    first = http.patch(f"{base}/state/n", json={"increment": 5}, headers=key)
    again = http.patch(f"{base}/state/n", json={"increment": 5}, headers=key)
    assert first.json() == again.json() == {"version": 1, "value": 5.0, "length": None}
    assert http.get(f"{base}/state/n").json()["value"] == 5
    event = {"Idempotency-Key": "event-1"}
    one = http.post(f"{base}/events", json={"role": "user", "content": "hi"}, headers=event)
    two = http.post(f"{base}/events", json={"role": "user", "content": "hi"}, headers=event)
    assert one.json() == two.json() and len(http.get(f"{base}/events").json()["events"]) == 1
    assert_error(http.put(f"{base}/state/k", json={"value": 1}, headers={"Idempotency-Key": "x" * 129}), 400)
    assert_error(http.put(f"{base}/state/k", json={"value": 1}, headers={"Idempotency-Key": "a b"}), 400)
    # Keys with '/', raw or encoded as %2F.
    assert http.put(f"{base}/state/a/b/c", json={"value": 1}).status_code == 200
    assert http.get(f"{base}/state/a%2Fb%2Fc").json()["value"] == 1
    assert http.patch(f"{base}/state/a/b/c", json={"increment": 1}).json()["value"] == 2
    assert http.delete(f"{base}/state/a/b/c").json()["existed"] is True
    assert_error(http.get(f"{base}/state/a/b/c"), 404, "STATE_KEY_NOT_FOUND")
    # Versions and restore.
    versions = http.get(f"{base}/versions").json()["versions"]
    assert [v["version"] for v in versions] == [4, 3, 2, 1]
    assert versions[-1] == {**versions[-1], "operation": "INCREMENT", "key": "n", "state": {"n": 5}}
    assert versions[0]["operation"] == "DELETE" and versions[0]["key"] == "a/b/c"
    assert http.post(f"{base}/versions/2/restore").json() == {"version": 5}
    assert http.get(f"{base}/state").json()["state"] == {"n": 5, "a/b/c": 1}
    assert_error(http.post(f"{base}/versions/2/restore?expected_version=1"), 409, "STATE_CONFLICT")
    assert_error(http.post(f"{base}/versions/9999/restore"), 404, "VERSION_NOT_FOUND")
    # The watch stream: a snapshot, then each change.
    with http.stream("GET", f"{base}/watch", timeout=10) as watch:
        assert watch.headers["content-type"].startswith("text/event-stream")
        lines = watch.iter_lines()
        assert next(lines) == "event: change"
        snapshot = json.loads(next(lines).removeprefix("data: "))
        assert snapshot["operation"] == "SNAPSHOT" and snapshot["state"] == {"n": 5, "a/b/c": 1}
        assert next(lines) == ""
        with httpx.Client(base_url=str(http.base_url)) as other:
            other.put(f"{base}/state/w", json={"value": "x"})
        assert next(lines) == "event: change"
        change = json.loads(next(lines).removeprefix("data: "))
        assert (change["operation"], change["key"], change["value"], change["version"]) == (
            "SET",
            "w",
            "x",
            6,
        )
    assert_error(http.get("/v1/sessions/nope/watch"), 404, "SESSION_NOT_FOUND")
    # /openapi.json documents the header on every write.
    paths = http.get("/openapi.json").json()["paths"]
    writes = [
        ("put", "/v1/sessions/{session_id}/state"),
        ("delete", "/v1/sessions/{session_id}/state"),
        ("put", "/v1/sessions/{session_id}/state/{key}"),
        ("patch", "/v1/sessions/{session_id}/state/{key}"),
        ("delete", "/v1/sessions/{session_id}/state/{key}"),
        ("post", "/v1/sessions/{session_id}/events"),
        ("post", "/v1/sessions/{session_id}/versions/{version}/restore"),
        ("post", "/v1/sessions/{session_id}/memories"),
        ("patch", "/v1/sessions/{session_id}/memories/{memory_id}"),
        ("delete", "/v1/sessions/{session_id}/memories/{memory_id}"),
        ("delete", "/v1/sessions/{session_id}/memories"),
        ("post", "/v1/sessions/{session_id}/knowledge"),
        ("post", "/v1/sessions/{session_id}/knowledge/files"),
        ("delete", "/v1/sessions/{session_id}/knowledge/{source}"),
        ("delete", "/v1/sessions/{session_id}/knowledge"),
        ("post", "/agent"),
    ]
    for method, path in writes:
        headers = [p["name"] for p in paths[path][method]["parameters"] if p["in"] == "header"]
        assert "idempotency-key" in [h.lower() for h in headers], (method, path)


def test_keep_alive_requests_do_not_wait_for_delayed_acks(http: httpx.Client) -> None:
    """Responses on a kept-alive connection go out at once (TCP_NODELAY): without it each one waited
    ~40 ms for the client's delayed ACK, so 20 requests took over 800 ms."""
    http.get("/v1/sessions")  # open the connection
    start = time.monotonic()
    for _ in range(20):
        assert http.get("/v1/sessions").status_code == 200
    assert time.monotonic() - start < 0.4


def test_the_interceptor_finds_the_app_of_every_kind_of_request() -> None:
    from sessionkit.v1 import agent_pb2, knowledge_pb2, memory_pb2
    from sessionkit_server.common.auth import scoped_apps

    def ref(app: str) -> common_pb2.SessionRef:
        return common_pb2.SessionRef(app_name=app, user_id="u", session_id="s")

    assert scoped_apps(state_pb2.GetStateRequest(session=ref("acme"))) == (["acme"], False)
    assert scoped_apps(state_pb2.GetStateRequest()) == (["default"], False)  # unset: the default app
    assert scoped_apps(state_pb2.ListSessionsRequest(app_name="globex")) == (["globex"], False)
    header = knowledge_pb2.KnowledgeFileHeader(session=ref("acme:docs"))
    assert scoped_apps(knowledge_pb2.UploadKnowledgeFileRequest(header=header)) == (["acme:docs"], False)
    assert scoped_apps(knowledge_pb2.UploadKnowledgeFileRequest(chunk=b"data")) == ([], False)
    start = agent_pb2.ChatStreamStart(session=ref("globex"), agent_name="a", message="hi")
    assert scoped_apps(agent_pb2.ChatStreamRequest(start=start)) == (["globex"], False)
    result = agent_pb2.ChatToolResult(call_id="c", result_json="1")
    assert scoped_apps(agent_pb2.ChatStreamRequest(tool_result=result)) == ([], False)
    reindex = memory_pb2.ReindexMemoriesRequest(session=ref("acme"), all_users=True)
    assert scoped_apps(reindex) == (["acme"], True)


def test_a_stream_of_another_tenant_is_refused(keyed: tuple[ServerThread, GatewayThread]) -> None:
    server, _ = keyed
    with grpc.insecure_channel(server.address) as channel:
        stub = state_pb2_grpc.StateServiceStub(channel)  # type: ignore[no-untyped-call]
        ref = common_pb2.SessionRef(app_name="globex", user_id="u", session_id="s")
        watch = stub.WatchState(state_pb2.WatchStateRequest(session=ref), metadata=[("x-api-key", KEY_A)])
        with pytest.raises(grpc.RpcError) as refused:
            next(iter(watch))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
