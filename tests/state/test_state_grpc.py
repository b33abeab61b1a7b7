"""The state service through a real gRPC server (the ``server`` fixture, on SQLite and PostgreSQL)
with the raw generated stubs: status codes and rich error details, health, reflection, streaming,
message size limits, concurrency and idempotency, as any gRPC client in any language sees them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from sessionkit.errors import (
    DOMAIN,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
    SessionNotFound,
    StateConflict,
    from_rpc_error,
)
from sessionkit.jsonvalues import from_struct, to_struct, to_value
from sessionkit.v1 import common_pb2, state_pb2, state_pb2_grpc
from tests.servers import ServerThread

StateChange = state_pb2.StateChange


def ref(session_id: str = "s1", user_id: str = "alice", app_name: str = "app") -> common_pb2.SessionRef:
    return common_pb2.SessionRef(app_name=app_name, user_id=user_id, session_id=session_id)


@pytest.fixture
async def channel(server: ServerThread) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture
async def stub(channel: grpc.aio.Channel) -> state_pb2_grpc.StateServiceStub:
    stub = state_pb2_grpc.StateServiceStub(channel)
    await stub.CreateSession(state_pb2.CreateSessionRequest(session=ref()), timeout=10)
    return stub


async def get_state(
    stub: state_pb2_grpc.StateServiceStub, session: str = "s1"
) -> tuple[dict[str, object], int]:
    reply = await stub.GetState(state_pb2.GetStateRequest(session=ref(session)), timeout=10)
    return from_struct(reply.state), reply.version


def details(error: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, list[tuple[str, str]]]:
    """(ErrorInfo, BadRequest field violations) decoded from the google.rpc.Status trailer."""
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status in the trailers"
    assert status.code == error.code().value[0]
    info = error_details_pb2.ErrorInfo()
    violations: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [(v.field, v.description) for v in bad.field_violations]
    return info, violations


# -- errors ----------------------------------------------------------------------------------------------


async def test_invalid_argument_carries_bad_request_field_violations(
    stub: state_pb2_grpc.StateServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetState(state_pb2.GetStateRequest(session=ref("../../etc")), timeout=10)
    error = info.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error_info, violations = details(error)
    assert (error_info.reason, error_info.domain) == ("INVALID_ARGUMENT", DOMAIN)
    assert [field for field, _ in violations] == ["session.session_id"]
    assert "../../etc" in violations[0][1]

    typed = from_rpc_error(error)
    assert type(typed) is InvalidArgument
    assert typed.violations == [FieldViolation(*violations[0])]

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SetStateValue(
            state_pb2.SetStateValueRequest(session=ref(), key="temp:x", value=to_value(1)), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in details(info.value)[1]] == ["key"]
    assert await get_state(stub) == ({}, 0)


async def test_unknown_session_is_not_found(stub: state_pb2_grpc.StateServiceStub) -> None:
    ghost = ref("ghost")
    for call in (
        stub.GetSession(state_pb2.GetSessionRequest(session=ghost), timeout=10),
        stub.GetState(state_pb2.GetStateRequest(session=ghost), timeout=10),
        stub.IncrementState(state_pb2.IncrementStateRequest(session=ghost, key="n", delta=1), timeout=10),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        error_info, _ = details(info.value)
        assert error_info.reason == "SESSION_NOT_FOUND"
        assert error_info.metadata["session_id"] == "ghost"
        assert isinstance(from_rpc_error(info.value), SessionNotFound)
    reply = await stub.DeleteSession(
        state_pb2.DeleteSessionRequest(session=ghost, allow_missing=True), timeout=10
    )
    assert reply.deleted is False


async def test_stale_expected_version_is_aborted_and_writes_nothing(
    stub: state_pb2_grpc.StateServiceStub,
) -> None:
    first = await stub.SetStateValue(
        state_pb2.SetStateValueRequest(session=ref(), key="a", value=to_value(1), expected_version=0),
        timeout=10,
    )
    assert first.version == 1
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SetStateValue(
            state_pb2.SetStateValueRequest(session=ref(), key="a", value=to_value(2), expected_version=0),
            timeout=10,
        )
    assert info.value.code() == grpc.StatusCode.ABORTED
    error_info, _ = details(info.value)
    assert error_info.reason == "STATE_CONFLICT"
    assert error_info.metadata["current_version"] == "1"
    assert isinstance(from_rpc_error(info.value), StateConflict)
    assert await get_state(stub) == ({"a": 1}, 1)


async def test_a_message_over_the_server_max_is_resource_exhausted_and_writes_nothing(
    stub: state_pb2_grpc.StateServiceStub,
) -> None:
    big = to_struct({"blob": "x" * (5 << 20)})
    assert big.ByteSize() > 4 << 20
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SaveState(state_pb2.SaveStateRequest(session=ref(), state=big), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert isinstance(from_rpc_error(info.value), ResourceExhausted)
    assert await get_state(stub) == ({}, 0)  # and the server still answers


async def test_state_over_the_state_limit_is_resource_exhausted_state_too_large(
    stub: state_pb2_grpc.StateServiceStub,
) -> None:
    # Under the message limit (4 MiB) but over the default state limit (1 MiB).
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SaveState(
            state_pb2.SaveStateRequest(session=ref(), state=to_struct({"blob": "x" * (2 << 20)})), timeout=30
        )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details(info.value)[0].reason == "STATE_TOO_LARGE"
    assert await get_state(stub) == ({}, 0)


# -- health and reflection ----------------------------------------------------------------------------------


async def test_health_says_serving_for_the_server_and_the_state_service(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "sessionkit.v1.StateService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_state_service(channel: grpc.aio.Channel) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    replies = [reply async for reply in call]
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert "sessionkit.v1.StateService" in names
    assert "grpc.health.v1.Health" in names


# -- streaming ---------------------------------------------------------------------------------------------


async def test_watch_state_streams_a_snapshot_then_changes(stub: state_pb2_grpc.StateServiceStub) -> None:
    await stub.SetStateValue(
        state_pb2.SetStateValueRequest(session=ref(), key="a", value=to_value(1)), timeout=10
    )
    call = stub.WatchState(state_pb2.WatchStateRequest(session=ref()))
    try:
        first = await asyncio.wait_for(call.read(), 10)
        assert (first.operation, first.version) == (StateChange.SNAPSHOT, 1)
        assert from_struct(first.state) == {"a": 1}

        await stub.IncrementState(
            state_pb2.IncrementStateRequest(session=ref(), key="n", delta=2), timeout=10
        )
        await stub.AppendState(
            state_pb2.AppendStateRequest(
                session=ref(), key="l", values=struct_pb2.ListValue(values=[to_value("x")])
            ),
            timeout=10,
        )
        await stub.DeleteStateValue(state_pb2.DeleteStateValueRequest(session=ref(), key="a"), timeout=10)
        changes = [await asyncio.wait_for(call.read(), 10) for _ in range(3)]
    finally:
        call.cancel()
    assert [(c.version, c.operation, c.key) for c in changes] == [
        (2, StateChange.INCREMENT, "n"),
        (3, StateChange.APPEND, "l"),
        (4, StateChange.DELETE, "a"),
    ]
    assert changes[0].value.number_value == 2
    assert [v.string_value for v in changes[1].value.list_value.values] == ["x"]
    assert from_struct(changes[2].state) == {"n": 2, "l": ["x"]}


async def test_watch_state_of_an_unknown_session_is_not_found(stub: state_pb2_grpc.StateServiceStub) -> None:
    call = stub.WatchState(state_pb2.WatchStateRequest(session=ref("ghost")), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


# -- concurrency and idempotency -------------------------------------------------------------------------


async def test_concurrent_increments_from_eight_clients_are_all_counted(server: ServerThread) -> None:
    clients, calls = 8, 200
    channels = [grpc.aio.insecure_channel(server.address) for _ in range(clients)]
    try:
        stubs = [state_pb2_grpc.StateServiceStub(ch) for ch in channels]
        await stubs[0].CreateSession(state_pb2.CreateSessionRequest(session=ref("counter")), timeout=10)

        async def client(stub: state_pb2_grpc.StateServiceStub) -> list[tuple[int, float]]:
            request = state_pb2.IncrementStateRequest(session=ref("counter"), key="n", delta=1)
            replies = []
            for _ in range(calls):
                reply = await stub.IncrementState(request, timeout=30)
                replies.append((reply.version, reply.value))
            return replies

        results = await asyncio.gather(*(client(s) for s in stubs))
        state, version = await get_state(stubs[0], "counter")
    finally:
        for ch in channels:
            await ch.close()
    total = clients * calls
    assert state == {"n": total} and version == total
    replies = sorted(r for per_client in results for r in per_client)
    # Every increment saw a distinct version and a distinct value: no lost or merged update.
    assert replies == [(i, float(i)) for i in range(1, total + 1)]


async def test_a_write_sent_twice_with_an_idempotency_key_is_applied_once(
    stub: state_pb2_grpc.StateServiceStub,
) -> None:
    request = state_pb2.IncrementStateRequest(session=ref(), key="n", delta=5, idempotency_key="req-1")
    first = await stub.IncrementState(request, timeout=10)
    second = await stub.IncrementState(request, timeout=10)
    assert (first.version, first.value) == (1, 5)
    assert second == first
    assert await get_state(stub) == ({"n": 5}, 1)

    other = await stub.IncrementState(
        state_pb2.IncrementStateRequest(session=ref(), key="n", delta=5, idempotency_key="req-2"), timeout=10
    )
    assert (other.version, other.value) == (2, 10)

    event = state_pb2.Event(role="user", content="hello")
    a = await stub.AppendEvent(state_pb2.AppendEventRequest(session=ref(), event=event, idempotency_key="ev"))
    b = await stub.AppendEvent(state_pb2.AppendEventRequest(session=ref(), event=event, idempotency_key="ev"))
    assert a == b
    listed = await stub.ListEvents(state_pb2.ListEventsRequest(session=ref()), timeout=10)
    assert [e.id for e in listed.events] == [a.event.id]


async def test_an_idempotency_key_reused_across_a_write_and_an_event_is_failed_precondition(
    stub: state_pb2_grpc.StateServiceStub,
) -> None:
    write = state_pb2.IncrementStateRequest(session=ref(), key="n", delta=1, idempotency_key="turn-1")
    assert (await stub.IncrementState(write, timeout=10)).version == 1
    event = state_pb2.Event(role="user", content="hello")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.AppendEvent(
            state_pb2.AppendEventRequest(session=ref(), event=event, idempotency_key="turn-1"), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(info.value)[0].reason == "IDEMPOTENCY_KEY_REUSED"
    assert isinstance(from_rpc_error(info.value), FailedPrecondition)

    appended = await stub.AppendEvent(
        state_pb2.AppendEventRequest(session=ref(), event=event, idempotency_key="turn-2"), timeout=10
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SetStateValue(
            state_pb2.SetStateValueRequest(
                session=ref(), key="a", value=to_value(1), idempotency_key="turn-2"
            ),
            timeout=10,
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(info.value)[0].reason == "IDEMPOTENCY_KEY_REUSED"

    assert await get_state(stub) == ({"n": 1}, 1)
    listed = await stub.ListEvents(state_pb2.ListEventsRequest(session=ref()), timeout=10)
    assert [e.id for e in listed.events] == [appended.event.id]
    assert (await stub.IncrementState(write, timeout=10)).version == 1  # each key replays its own kind


async def test_an_idempotency_key_reused_by_another_kind_of_state_write_is_failed_precondition(
    stub: state_pb2_grpc.StateServiceStub,
) -> None:
    """Found by tests/fuzz (an IncrementState with a key a SetStateValue had used answered INTERNAL: the
    set's stored result, which has no value, was replayed as the increment's answer)."""
    first = state_pb2.SetStateValueRequest(session=ref(), key="a", value=to_value("x"), idempotency_key="k-1")
    assert (await stub.SetStateValue(first, timeout=10)).version == 1
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.IncrementState(
            state_pb2.IncrementStateRequest(session=ref(), key="n", delta=1, idempotency_key="k-1"),
            timeout=10,
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    found = details(info.value)[0]
    assert found.reason == "IDEMPOTENCY_KEY_REUSED" and found.metadata["method"] == "SetStateValue"
    assert "IncrementState" in (info.value.details() or "")
    # The same kind of write with the key is still a replay of the first answer, and nothing changed.
    assert (await stub.SetStateValue(first, timeout=10)).version == 1
    assert await get_state(stub) == ({"a": "x"}, 1)
