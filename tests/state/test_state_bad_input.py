"""Bad input to the state service over real gRPC (the ``server`` fixture, on SQLite and PostgreSQL): every
refusal is INVALID_ARGUMENT naming the field, quotes at most a short prefix of what was sent, and
writes nothing; never INTERNAL, UNKNOWN or a poisoned session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
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
