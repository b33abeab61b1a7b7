"""The agent's in-process calls to its own server's services (services/common/in_process.py): they run
through the server's interceptors, so auth, readiness and the error mapping give what the same call
over gRPC gives: the same typed error, rebuilt by the SDK from the same status."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from sessionkit import reasons
from sessionkit.errors import (
    PermissionDenied,
    ServiceUnavailable,
    SessionNotFound,
    Unauthenticated,
    from_rpc_error,
)
from sessionkit.v1 import state_pb2
from sessionkit_server.common.auth import ApiKeyInterceptor, KeyRing, key_digest
from sessionkit_server.common.in_process import InProcessCalls
from sessionkit_server.common.interceptors import Activity, ErrorAndLogInterceptor

GET = "/sessionkit.v1.StateService/GetSession"
WATCH = "/sessionkit.v1.StateService/WatchState"


def calls_with(behavior: Any, *, keys: dict[str, str] | None = None, ready: bool = True) -> InProcessCalls:
    event = asyncio.Event()
    if ready:
        event.set()
    chain: list[Any] = [ErrorAndLogInterceptor(Activity(), event)]
    if keys:
        chain.append(ApiKeyInterceptor(KeyRing({key_digest(k): tenant for k, tenant in keys.items()})))
    calls = InProcessCalls(chain)

    class Server:  # what a grpc.aio.Server is asked by the generated registration
        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            pass

        def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
            self.handlers = handlers

    handlers = {
        "GetSession": grpc.unary_unary_rpc_method_handler(behavior),
        "WatchState": grpc.unary_stream_rpc_method_handler(behavior),
    }
    calls.registrar(Server()).add_registered_method_handlers("sessionkit.v1.StateService", handlers)
    return calls


def request(app: str = "app") -> state_pb2.GetSessionRequest:
    request = state_pb2.GetSessionRequest()
    request.session.app_name = app
    request.session.user_id = "u"
    request.session.session_id = "s"
    return request


async def error_of(calls: InProcessCalls, message: Any, key: str = "", seconds: float | None = None) -> Any:
    with pytest.raises(grpc.RpcError) as caught:
        await calls.unary(GET, message, key, seconds)
    return from_rpc_error(caught.value)


async def test_answers_and_errors_are_what_the_network_gives() -> None:
    async def behavior(message: Any, context: Any) -> Any:
        if message.session.session_id == "missing":
            raise reasons.SESSION_NOT_FOUND.error(detail="no such session")
        return state_pb2.GetSessionResponse()

    calls = calls_with(behavior)
    assert calls.serves(GET) and not calls.serves(WATCH)  # streams stay on the network
    assert isinstance(await calls.unary(GET, request(), "", None), state_pb2.GetSessionResponse)
    missing = request()
    missing.session.session_id = "missing"
    error = await error_of(calls, missing)
    assert isinstance(error, SessionNotFound) and reasons.SESSION_NOT_FOUND.matches(error)


async def test_auth_applies_with_the_callers_key() -> None:
    async def behavior(message: Any, context: Any) -> Any:
        return state_pb2.GetSessionResponse()

    calls = calls_with(behavior, keys={"sk-a": "tenant-a"})
    assert isinstance(await calls.unary(GET, request("tenant-a"), "sk-a", None), state_pb2.GetSessionResponse)
    assert isinstance(await error_of(calls, request("tenant-a")), Unauthenticated)
    assert isinstance(await error_of(calls, request("tenant-b"), "sk-a"), PermissionDenied)


async def test_not_ready_is_retryable_and_the_deadline_holds() -> None:
    async def slow(message: Any, context: Any) -> Any:
        await asyncio.sleep(5)
        return state_pb2.GetSessionResponse()

    assert isinstance(await error_of(calls_with(slow, ready=False), request()), ServiceUnavailable)
    with pytest.raises(grpc.RpcError) as caught:
        await calls_with(slow).unary(GET, request(), "", 0.05)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
