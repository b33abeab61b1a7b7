"""The HTTP gateway in front of a real gRPC server (real uvicorn, real sockets): REST round trips on SQLite
and PostgreSQL, the one error shape, /health, idempotency keys, versions and watch."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from grpc_health.v1 import health_pb2

from tests.conftest import free_port
from tests.gateway.support import gateway_for
from tests.gateway.test_gateway_support import GatewayThread, assert_error, gateway_settings
from tests.servers import ServerThread

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
    ~40 ms for the client's delayed ACK, so 20 requests took over 800 ms and none under 40 ms."""
    http.get("/v1/sessions")  # open the connection
    fastest = float("inf")
    for _ in range(20):
        start = time.monotonic()
        assert http.get("/v1/sessions").status_code == 200
        fastest = min(fastest, time.monotonic() - start)
    # The fastest of 20, not their sum: a delayed ACK holds back every response by ~40 ms, while the
    # load of a busy CI machine only slows some of them.
    assert fastest < 0.03, f"the fastest of 20 kept-alive requests took {fastest * 1000:.1f} ms"
