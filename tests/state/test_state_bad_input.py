"""Bad input to the state service over real gRPC (the ``server`` fixture, on SQLite and PostgreSQL): every
refusal is INVALID_ARGUMENT naming the field, quotes at most a short prefix of what was sent, and
writes nothing; never INTERNAL, UNKNOWN or a poisoned session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from sessionkit.jsonvalues import from_struct, to_struct, to_value
from sessionkit.v1 import common_pb2, state_pb2, state_pb2_grpc
from tests.servers import ServerThread


def ref(session_id: str = "s1") -> common_pb2.SessionRef:
    return common_pb2.SessionRef(app_name="app", user_id="alice", session_id=session_id)


@pytest.fixture
async def stub(server: ServerThread) -> AsyncIterator[state_pb2_grpc.StateServiceStub]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = state_pb2_grpc.StateServiceStub(channel)
        await stub.CreateSession(state_pb2.CreateSessionRequest(session=ref()), timeout=10)
        yield stub


async def state_of(stub: state_pb2_grpc.StateServiceStub) -> tuple[dict[str, object], int]:
    reply = await stub.GetState(state_pb2.GetStateRequest(session=ref()), timeout=10)
    return from_struct(reply.state), reply.version


def violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status in the trailers"
    found: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found += [(v.field, v.description) for v in bad.field_violations]
    return found


async def test_a_huge_state_key_is_invalid_argument_quoting_only_a_prefix(
    stub: state_pb2_grpc.StateServiceStub,
) -> None:
    huge = "k" * 100_000
    calls = {
        "set": stub.SetStateValue(
            state_pb2.SetStateValueRequest(session=ref(), key=huge, value=to_value(1)), timeout=10
        ),
        "save": stub.SaveState(
            state_pb2.SaveStateRequest(session=ref(), state=to_struct({huge: 1})), timeout=10
        ),
        "get": stub.GetState(state_pb2.GetStateRequest(session=ref(), keys=[huge] * 30), timeout=10),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        found = violations(info.value)
        assert found, name
        assert found[0][0].startswith(("key", "state.", "keys[0]")), found[0][0][:80]
        assert "characters" in found[0][1]
        echoed = len(info.value.details() or "") + sum(len(f) + len(d) for f, d in found)
        assert echoed < 8000, (name, echoed)
    assert await state_of(stub) == ({}, 0)


@pytest.mark.parametrize(
    "ttl",
    [
        duration_pb2.Duration(seconds=300_000_000_000),
        duration_pb2.Duration(seconds=10 * 365 * 86400 + 1),
        duration_pb2.Duration(seconds=5, nanos=-1),
        duration_pb2.Duration(seconds=0, nanos=2_000_000_000),
        duration_pb2.Duration(seconds=-60),
    ],
    ids=["far_future", "just_over_ten_years", "negative_nanos", "nanos_over_a_second", "negative"],
)
async def test_a_ttl_out_of_range_is_invalid_argument_and_creates_no_session(
    stub: state_pb2_grpc.StateServiceStub, ttl: duration_pb2.Duration
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateSession(state_pb2.CreateSessionRequest(session=ref("long"), ttl=ttl), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in violations(info.value)] == ["ttl"]
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetSession(state_pb2.GetSessionRequest(session=ref("long")), timeout=10)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await stub.ListSessions(
        state_pb2.ListSessionsRequest(app_name="app", user_id="alice"), timeout=10
    )
    assert [s.ref.session_id for s in listed.sessions] == ["s1"]


async def test_a_ttl_of_ten_years_is_accepted_and_the_session_stays_readable(
    stub: state_pb2_grpc.StateServiceStub,
) -> None:
    ttl = duration_pb2.Duration(seconds=10 * 365 * 86400)
    await stub.CreateSession(state_pb2.CreateSessionRequest(session=ref("long"), ttl=ttl), timeout=10)
    reply = await stub.GetSession(state_pb2.GetSessionRequest(session=ref("long")), timeout=10)
    assert reply.session.ttl.seconds == ttl.seconds
    again = await stub.CreateSession(
        state_pb2.CreateSessionRequest(session=ref("long"), ttl=ttl, get_if_exists=True), timeout=10
    )
    assert again.created is False


async def test_one_number_rule_increment_and_save_refuse_numbers_beyond_2_53(
    stub: state_pb2_grpc.StateServiceStub,
) -> None:
    """Numbers travel as doubles, so the rule is on the value whatever its type: beyond +/-2**53 a
    double cannot hold the integer exactly, so increment, set and save all refuse it."""
    calls = {
        "increment": stub.IncrementState(
            state_pb2.IncrementStateRequest(session=ref(), key="n", delta=9223372036854775807), timeout=10
        ),
        "set": stub.SetStateValue(
            state_pb2.SetStateValueRequest(session=ref(), key="n", value=to_value(1e19)), timeout=10
        ),
        "save": stub.SaveState(
            state_pb2.SaveStateRequest(session=ref(), state=to_struct({"n": [-(2.0**60)]})), timeout=10
        ),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert [field for field, _ in violations(info.value)] == [
            {"increment": "delta", "set": "value", "save": "state.n[0]"}[name]
        ]
    assert await state_of(stub) == ({}, 0)
    reply = await stub.IncrementState(
        state_pb2.IncrementStateRequest(session=ref(), key="n", delta=2**53), timeout=10
    )
    assert reply.value == 2**53
    assert await state_of(stub) == ({"n": 2**53}, 1)


@pytest.mark.parametrize(
    ("field", "bad"),
    [("content", "before\x00after"), ("author", "a\x00b"), ("role", "us\x00er")],
    ids=["content", "author", "role"],
)
async def test_text_a_store_cannot_hold_is_refused_alike_on_every_store(
    stub: state_pb2_grpc.StateServiceStub, field: str, bad: str
) -> None:
    """PostgreSQL's text holds no NUL: one rule on every store, so SQLite refuses it too, naming the
    field. (A lone surrogate cannot travel in a protobuf string: the gateway's tests cover it.)"""
    event = state_pb2.Event(role="user", content="hi", author="me")
    setattr(event, field, bad)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.AppendEvent(state_pb2.AppendEventRequest(session=ref(), event=event), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [name for name, _ in violations(info.value)] == [f"event.{field}"]
    listed = await stub.ListEvents(state_pb2.ListEventsRequest(session=ref()), timeout=10)
    assert list(listed.events) == []


async def test_negative_versions_and_a_nul_idempotency_key_are_invalid_argument(
    stub: state_pb2_grpc.StateServiceStub,
) -> None:
    calls = {
        "expected_version": stub.SetStateValue(
            state_pb2.SetStateValueRequest(session=ref(), key="a", value=to_value(1), expected_version=-1),
            timeout=10,
        ),
        "version": stub.RestoreStateVersion(
            state_pb2.RestoreStateVersionRequest(session=ref(), version=-1), timeout=10
        ),
        "idempotency_key": stub.SetStateValue(
            state_pb2.SetStateValueRequest(
                session=ref(), key="a", value=to_value(1), idempotency_key="k\x00"
            ),
            timeout=10,
        ),
    }
    for field, call in calls.items():
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert [name for name, _ in violations(info.value)] == [field]
    event = state_pb2.Event(role="user", content="hi")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.AppendEvent(
            state_pb2.AppendEventRequest(session=ref(), event=event, idempotency_key="k\x00"), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await state_of(stub) == ({}, 0)


def _nested_value(depth: int) -> bytes:
    """A Value nested ``depth`` list_values deep, serialized by hand (protobuf refuses to build it)."""
    data = b""
    for _ in range(depth):
        # Value.list_value (field 6, length-delimited) holding a ListValue whose values (field 1) is data.
        inner = b"\x0a" + _varint(len(data)) + data
        data = b"\x32" + _varint(len(inner)) + inner
    return data


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xff\xff\xff",
        # SetStateValueRequest.key (field 2) holding invalid UTF-8.
        state_pb2.SetStateValueRequest(session=ref()).SerializeToString() + b"\x12\x02\xc3\x28",
        # SetStateValueRequest.value (field 3) nested past protobuf's recursion limit (100).
        state_pb2.SetStateValueRequest(session=ref(), key="a").SerializeToString()
        + b"\x1a"
        + _varint(len(_nested_value(120)))
        + _nested_value(120),
    ],
    ids=["garbage", "invalid_utf8", "too_deep"],
)
async def test_a_malformed_request_message_is_invalid_argument(server: ServerThread, payload: bytes) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        await state_pb2_grpc.StateServiceStub(channel).CreateSession(
            state_pb2.CreateSessionRequest(session=ref()), timeout=10
        )
        raw = channel.unary_unary(
            "/sessionkit.v1.StateService/SetStateValue",
            request_serializer=lambda data: data,
            response_deserializer=lambda data: data,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw(payload, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [name for name, _ in violations(info.value)] == ["request"]
        reply = await state_pb2_grpc.StateServiceStub(channel).GetState(
            state_pb2.GetStateRequest(session=ref()), timeout=10
        )
        assert reply.version == 0


async def test_a_session_stored_with_a_ttl_beyond_the_range_before_the_rule_still_reads(
    server: ServerThread, database_url: str
) -> None:
    """Sessions written before the TTL rule may expire after the year 9999: they read (their times
    shown at the end of the range) instead of answering INTERNAL on every read until deleted."""
    from sessionkit_server.state.sql_store import SqlStateStore
    from sessionkit_server.state.store import SessionKey

    store = SqlStateStore(database_url)
    await store.start()
    try:
        await store.create_session(SessionKey("app", "alice", "old"), 300_000_000_000, {}, False, 0)
    finally:
        await store.close()
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = state_pb2_grpc.StateServiceStub(channel)
        reply = await stub.GetSession(state_pb2.GetSessionRequest(session=ref("old")), timeout=10)
        assert reply.session.expire_time.ToDatetime().year == 9999
        listed = await stub.ListSessions(
            state_pb2.ListSessionsRequest(app_name="app", user_id="alice"), timeout=10
        )
        assert "old" in [s.ref.session_id for s in listed.sessions]
