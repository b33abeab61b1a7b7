"""The HTTP gateway in front of a real gRPC server (real uvicorn, real sockets): API keys and tenant
isolation (also when going around the gateway to gRPC), binding and TLS."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2

from sessionkit.errors import FailedPrecondition
from sessionkit.v1 import common_pb2, state_pb2, state_pb2_grpc
from sessionkit_server.common.config import ServerSettings
from sessionkit_server.gateway.server import GatewayServer, local_client_settings
from tests.gateway.support import KEYS, gateway_for, state_server
from tests.gateway.test_gateway_support import (
    KEY_A,
    KEY_B,
    GatewayThread,
    assert_error,
    gateway_settings,
    self_signed,
)
from tests.servers import ServerThread

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
