"""The faults the property-based suites of tests/fuzz found, each as an explicit case (the suites' seeds
may stop generating them once the code or the strategies change)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from sessionkit.errors import MAX_STATUS_BYTES, FieldViolation, InvalidArgument, NotFound, to_status
from sessionkit.v1 import agent_pb2, agent_pb2_grpc, common_pb2, memory_pb2, memory_pb2_grpc
from tests.fuzz.conftest import Services

EMOJI = "\U0001f600"


@pytest.fixture(scope="module")
def channel(services: Services) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(services.server.address) as channel:
        yield channel


def _reason(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"no google.rpc.Status: {error.code()} {error.details()}"  # type: ignore[attr-defined]
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    raise AssertionError("no ErrorInfo")


def test_an_error_echoing_a_long_non_ascii_id_reaches_the_client(channel: grpc.Channel) -> None:
    """Seed 7 of the gRPC fuzz: GetMemory and GetAgent with an id of thousands of emoji answered
    RESOURCE_EXHAUSTED "metadata size exceeds hard limit": the message was clipped to 1024 characters,
    which percent-encoded in grpc-message were 12 KB, and the NOT_FOUND was lost."""
    ref = common_pb2.SessionRef(user_id="regress", session_id="r1")
    calls = {
        "GetMemory": lambda: memory_pb2_grpc.MemoryServiceStub(channel).GetMemory(
            memory_pb2.GetMemoryRequest(session=ref, memory_id=EMOJI * 3000), timeout=30
        ),
        "GetAgent": lambda: agent_pb2_grpc.AgentServiceStub(channel).GetAgent(
            agent_pb2.GetAgentRequest(session=ref, agent_name=EMOJI * 3000), timeout=30
        ),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as info:
            call()
        code = info.value.code()  # type: ignore[attr-defined]
        assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), (name, code)
        assert _reason(info.value), name


def test_an_error_status_fits_the_trailers_whatever_it_quotes() -> None:
    """The message, metadata and violations are clipped in bytes of UTF-8, not characters, and the
    whole Status stays within MAX_STATUS_BYTES (violations past it are counted, not sent)."""
    error = NotFound(EMOJI * 5000, metadata={"id": EMOJI * 5000})
    assert len(error.message.encode()) <= 1024 and len(error.metadata["id"].encode()) <= 256
    many = InvalidArgument(
        EMOJI * 5000, violations=[FieldViolation(EMOJI * 500, EMOJI * 5000) for _ in range(40)]
    )
    status = to_status(many)
    assert status.ByteSize() <= MAX_STATUS_BYTES
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details)
    assert 1 <= len(bad.field_violations) < 20
    assert bad.field_violations[-1].description.endswith("more violations")
    # An ASCII status that fits is sent whole.
    few = InvalidArgument("bad", violations=[FieldViolation("a", "b"), FieldViolation("c", "d")])
    assert len(error_details_pb2.BadRequest.FromString(to_status(few).details[1].value).field_violations) == 2
