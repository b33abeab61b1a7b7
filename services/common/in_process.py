"""Calls from one service of a server to another service of the same server, without the network.

The agent service calls state, memory and knowledge through the SDK's clients like any caller, so a
replica of it can run anywhere. When they are served by its own process (``sessionkit serve``, the
embedded server), each of those calls still went through a gRPC client, HTTP/2 over a local socket and
the gRPC server: six to seven calls per turn, each serialised twice and handed between gRPC's threads
and the event loop, on the turn's critical path (bench/agent_bench.py, docs/BENCHMARKS.md).

:class:`InProcessCalls` holds this server's own unary handlers (registered through the same
``add_*Servicer_to_server`` functions as the gRPC server) and runs one through the same server
interceptors, in the same order, with the caller's API key in its metadata: auth, the error mapping,
readiness, drain and the activity count apply exactly as over gRPC. A failure comes back as the
``grpc.aio.AioRpcError`` the network would have produced from that status, so the SDK's clients, their
retries and their typed errors are unchanged. :class:`InProcessTransport` gives the SDK's clients stubs
with those calls for the unary methods served here; everything else (streams, services served
elsewhere) stays on the network. Messages are handed over as objects: neither side keeps or changes them
afterwards.

No service is imported here: the composition root (services/server.py) decides what is local.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc

from sessionkit.transport import API_KEY_METADATA, Transport


def _rpc_error(
    code: grpc.StatusCode, details: str, trailing: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.AioRpcError:
    """The error a grpc.aio client raises for a call that ended with this status."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details, None)


class _CallDetails(grpc.HandlerCallDetails):
    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = method
        self.invocation_metadata = metadata


class _Context:
    """What the server-side handlers and interceptors use of a ``grpc.aio.ServicerContext``."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def abort_with_status(self, status: grpc.Status) -> None:
        raise _rpc_error(status.code, status.details, status.trailing_metadata)

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Sequence[tuple[str, Any]] = ()
    ) -> None:
        raise _rpc_error(code, details, trailing_metadata)


class InProcessCalls:
    """This server's unary handlers, callable in-process through the server's interceptors. It takes
    the ``add_*Servicer_to_server`` registrations a ``grpc.aio.Server`` takes."""

    def __init__(self, interceptors: Sequence[grpc.aio.ServerInterceptor]) -> None:  # type: ignore[type-arg]
        self._interceptors = tuple(interceptors)
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    # -- registration (the part of grpc.aio.Server's API the generated code calls) --------------------

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler[Any, Any]]) -> None:
        """Ignored: the generated code registers every method by name as well (below)."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        for name, handler in handlers.items():
            if handler.unary_unary is not None:
                self._handlers[f"/{service}/{name}"] = handler

    def registrar(self, server: Any) -> _Registrar:
        """Where to register a servicer so that ``server`` serves it over gRPC and this object
        in-process, with the very same handler objects (the interceptors build their wrapper of a
        handler once and keep it while the handler is the same)."""
        return _Registrar(server, self)

    def serves(self, method: str) -> bool:
        return method in self._handlers

    # -- calls ---------------------------------------------------------------------------------------

    async def _handler(self, details: _CallDetails) -> Any:
        """The handler as the interceptors wrap it, the first interceptor outermost (as grpc.aio's
        server chains them)."""
        remaining = iter(self._interceptors)

        async def continuation(call: grpc.HandlerCallDetails) -> Any:
            interceptor = next(remaining, None)
            if interceptor is None:
                return self._handlers.get(call.method)
            return await interceptor.intercept_service(continuation, call)

        return await continuation(details)

    async def unary(self, method: str, request: Any, api_key: str, seconds: float | None) -> Any:
        metadata = ((API_KEY_METADATA, api_key),) if api_key else ()
        details = _CallDetails(method, metadata)
        handler = await self._handler(details)
        if handler is None or handler.unary_unary is None:  # an interceptor refused to serve it
            raise _rpc_error(grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {method}")
        try:
            async with asyncio.timeout(seconds):
                return await handler.unary_unary(request, _Context(metadata))
        except TimeoutError:
            raise _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None


class _Registrar:
    """``add_*Servicer_to_server``'s view of a gRPC server and an InProcessCalls together."""

    def __init__(self, server: Any, calls: InProcessCalls) -> None:
        self._server = server
        self._calls = calls

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler[Any, Any]]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self._server.add_registered_method_handlers(service, handlers)
        self._calls.add_registered_method_handlers(service, handlers)


class _UnaryCall:
    """A stub's multicallable for one in-process unary method."""

    def __init__(
        self, calls: InProcessCalls, method: str, api_key: str, deserializer: Callable[[bytes], Any] | None
    ) -> None:
        self._calls = calls
        self._method = method
        self._api_key = api_key
        self._deserializer = deserializer

    async def __call__(self, request: Any, *, timeout: float | None = None, **_: Any) -> Any:  # noqa: ASYNC109 - grpc.aio stub signature
        reply = await self._calls.unary(self._method, request, self._api_key, timeout)
        if type(reply) is bytes and self._deserializer is not None:
            # A handler may answer with its reply already encoded (GetState's cached encodings): the
            # network would have decoded it with the stub's deserializer, so do the same.
            return self._deserializer(reply)
        return reply


class InProcessTransport(Transport):
    """A Transport whose unary calls to ``local`` services (``"state"``, ``"memory"``...) run
    in-process; the rest, and every stream, go over the network as usual (same retries, same errors)."""

    calls: InProcessCalls
    local: frozenset[str]
    _in_process_stubs: dict[Any, tuple[Any, Any]]

    @classmethod
    def over(cls, transport: Transport, calls: InProcessCalls, local: Iterable[str]) -> InProcessTransport:
        made = cls(
            transport.settings, transport.address, transport.storage_path, transport.policy, transport.api_key
        )
        made.calls = calls
        made.local = frozenset(local)
        made._in_process_stubs = {}
        return made

    async def stub(self, service: str, stub_class: Callable[[Any], Any]) -> Any:
        network = await super().stub(service, stub_class)
        if service not in self.local:
            return network
        cached = self._in_process_stubs.get(stub_class)
        if cached is not None and cached[0] is network:
            return cached[1]
        # The network stub's channel is private to grpc; its multicallables are what the fallback needs.
        key = self.settings.api_key if self.api_key is None else self.api_key  # as the network channel's
        stub = stub_class(_StubChannel(network, self.calls, key))
        self._in_process_stubs[stub_class] = (network, stub)
        return stub


class _StubChannel:
    """What a generated stub asks of its channel: an in-process call for each unary method served here,
    else the network stub's own multicallable of that method (by name, the path's last part)."""

    def __init__(self, network_stub: Any, calls: InProcessCalls, api_key: str) -> None:
        self._stub = network_stub
        self._calls = calls
        self._api_key = api_key

    def _network(self, method: str) -> Any:
        return getattr(self._stub, method.rsplit("/", 1)[-1])

    def unary_unary(
        self, method: str, response_deserializer: Callable[[bytes], Any] | None = None, **_: Any
    ) -> Any:
        if self._calls.serves(method):
            return _UnaryCall(self._calls, method, self._api_key, response_deserializer)
        return self._network(method)

    def unary_stream(self, method: str, **_: Any) -> Any:
        return self._network(method)

    def stream_unary(self, method: str, **_: Any) -> Any:
        return self._network(method)

    def stream_stream(self, method: str, **_: Any) -> Any:
        return self._network(method)
