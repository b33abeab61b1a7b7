"""Watcher caps (issue 14, item 12), on a real state server over gRPC and through the gateway's SSE
route: watch streams are capped per session and per tenant (RESOURCE_EXHAUSTED / 429
TOO_MANY_WATCHERS naming the cap and its setting), a closed stream frees its place, and the watchers
within the caps still get every change. (Write cost with 0 vs 200 watchers: bench/watch_bench.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx
import pytest

from sessionkit.jsonvalues import from_struct, to_value
from sessionkit.v1 import common_pb2, state_pb2, state_pb2_grpc
from sessionkit_server.common.config import ServerSettings
from tests.gateway.test_gateway_support import GatewayThread, assert_error, gateway_settings
from tests.servers import ServerThread

KEY_C = "key-tenant-c-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings = ServerSettings(
        port=0,
        data_dir=tmp_path_factory.mktemp("watch-caps") / "data",
        services=["state"],
        log_format="text",
        max_watchers_per_session=2,
        max_watchers_per_tenant=3,
    )
    thread = ServerThread(settings).start()
    yield thread
    thread.stop()


@pytest.fixture
async def stub(server: ServerThread) -> AsyncIterator[state_pb2_grpc.StateServiceStub]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield state_pb2_grpc.StateServiceStub(channel)


def ref(app: str, session_id: str) -> common_pb2.SessionRef:
    return common_pb2.SessionRef(app_name=app, user_id="u", session_id=session_id)


async def open_watch(stub: state_pb2_grpc.StateServiceStub, session: common_pb2.SessionRef) -> object:
    """A watch stream whose first message (the snapshot) has arrived."""
    await stub.CreateSession(state_pb2.CreateSessionRequest(session=session, get_if_exists=True), timeout=10)
    call = stub.WatchState(state_pb2.WatchStateRequest(session=session), timeout=60)
    first = await call.read()
    assert first.operation == state_pb2.StateChange.SNAPSHOT
    return call


async def refused(stub: state_pb2_grpc.StateServiceStub, session: common_pb2.SessionRef) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await open_watch(stub, session)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    return str(info.value.details())


async def test_watchers_are_capped_per_session_and_per_tenant(stub: state_pb2_grpc.StateServiceStub) -> None:
    s1, s2, s3 = ref("acme", "s1"), ref("acme:other", "s2"), ref("acme", "s3")
    calls = [await open_watch(stub, s1), await open_watch(stub, s1)]
    try:
        message = await refused(stub, s1)
        assert "session 's1' already has 2 watch streams" in message
        assert "SESSIONKIT_MAX_WATCHERS_PER_SESSION" in message
        calls.append(await open_watch(stub, s2))  # the tenant's third
        message = await refused(stub, s3)
        assert "tenant 'acme' already has 3 watch streams" in message
        assert "SESSIONKIT_MAX_WATCHERS_PER_TENANT" in message
        calls.append(await open_watch(stub, ref("globex", "s1")))  # another tenant has its own count

        # The watchers within the caps get every change.
        await stub.SetStateValue(state_pb2.SetStateValueRequest(session=s1, key="k", value=to_value(7)))
        for call in calls[:2]:
            change = await asyncio.wait_for(call.read(), 10)  # type: ignore[attr-defined]
            assert (change.key, from_struct(change.state)) == ("k", {"k": 7})

        # A closed stream frees its place (the server sees the cancel shortly after).
        calls.pop(0).cancel()  # type: ignore[attr-defined]
        deadline = time.monotonic() + 10
        while True:
            try:
                calls.append(await open_watch(stub, s3))
                break
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert time.monotonic() < deadline, "the cancelled watch still counts"
                await asyncio.sleep(0.1)
    finally:
        for call in calls:
            call.cancel()  # type: ignore[attr-defined]


def events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith("data:"):
            yield json.loads(line[5:])


def test_gateway_watchers_share_one_upstream_stream_and_are_capped(server: ServerThread) -> None:
    # The server allows 2 watchers per session; the gateway's 3 SSE watchers of one session fit because
    # they share one upstream WatchState call. The gateway's own cap refuses the 4th.
    settings = gateway_settings(api_keys={KEY_C: "initech"}, max_watchers_per_session=3)
    gateway = GatewayThread(settings, server.address).start()
    try:
        with httpx.Client(base_url=gateway.url, timeout=30, headers={"X-API-Key": KEY_C}) as http:
            assert http.post("/v1/sessions", json={"session_id": "g1"}).status_code == 201
            assert http.put("/v1/sessions/g1/state/user:name", json={"value": "ann"}).status_code == 200
            with contextlib.ExitStack() as stack:
                readers = []
                for _ in range(3):
                    stream = stack.enter_context(http.stream("GET", "/v1/sessions/g1/watch"))
                    assert stream.status_code == 200
                    reader = events(stream.iter_lines())
                    snapshot = next(reader)
                    # Joiners get their own snapshot, with the user: keys a watch's snapshot has.
                    assert (snapshot["operation"], snapshot["state"]) == ("SNAPSHOT", {"user:name": "ann"})
                    readers.append(reader)
                error = assert_error(http.get("/v1/sessions/g1/watch"), 429, "TOO_MANY_WATCHERS")
                assert "limit 3, setting SESSIONKIT_MAX_WATCHERS_PER_SESSION" in error["message"]
                assert error["metadata"]["limit"] == "3"
                assert http.put("/v1/sessions/g1/state/k", json={"value": 1}).status_code == 200
                for reader in readers:
                    change = next(reader)
                    assert (change["operation"], change["key"], change["value"]) == ("SET", "k", 1)
    finally:
        gateway.stop()
