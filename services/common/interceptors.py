"""Server interceptors: the one place where exceptions become gRPC statuses, calls are logged and
activity is tracked (for the embedded server's idle shutdown)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_status import rpc_status

from sessionkit import reasons
from sessionkit.errors import (
    FieldViolation,
    InternalError,
    InvalidArgument,
    ServiceUnavailable,
    SessionKitError,
    to_status,
)
from sessionkit_server.common.list_limits import check_lists

log = logging.getLogger("sessionkit.rpc")


class Activity:
    """Counts calls in flight and remembers when the last one ended."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.last_active = time.monotonic()
        #: sessionkit calls in flight by service ("sessionkit.v1.StateService"); health and reflection
        #: calls (a long health Watch) are not counted, so a drain never waits on them.
        self.service_calls: Counter[str] = Counter()
        #: Set on SIGTERM: new calls are refused (SERVER_DRAINING) while those in flight finish.
        self.draining = False

        self._quiet = asyncio.Event()
        self._quiet.set()

    def busy(self) -> int:
        return sum(self.service_calls.values())

    def call_started(self, service: str) -> None:
        self.service_calls[service] += 1
        self._quiet.clear()

    def call_ended(self, service: str) -> None:
        self.service_calls[service] -= 1
        if not self.busy():
            self._quiet.set()

    async def wait_quiet(self, seconds: float) -> None:
        """Until no service call is in flight, or ``seconds`` have passed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._quiet.wait(), seconds)

    def idle_for(self) -> float:
        return 0.0 if self.in_flight else time.monotonic() - self.last_active


def _status_for(error: BaseException, method: str) -> grpc.Status:
    if not isinstance(error, SessionKitError):
        log.exception("unhandled error in %s", method, exc_info=error)
        error = InternalError(f"internal error in {method}; the server log has the details")
    return rpc_status.to_status(to_status(error))


class _Malformed:
    """A request message that did not parse: handed to the handler wrapper, which refuses it."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """The deserializer, returning _Malformed instead of raising: a request that does not parse
    (invalid UTF-8 in a string, garbage, nesting over protobuf's limit) is the caller's error, so
    INVALID_ARGUMENT, where gRPC answers a deserializer's exception with UNKNOWN."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:  # DecodeError, RecursionError, ValueError: all a bad message
            return _Malformed(error)

    return parse


def _refuse(request: Any) -> Any:
    """The request, if it parsed and its lists are within their limits (INVALID_ARGUMENT otherwise)."""
    if isinstance(request, _Malformed):
        raise InvalidArgument(
            f"the request message does not parse: {type(request.error).__name__}",
            violations=[FieldViolation("request", "not a valid serialized message of this method's type")],
        )
    if isinstance(request, Message):
        check_lists(request)
    return request


def _passthrough(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """The serializer, passing a reply that is already its encoding (bytes) through: a handler may
    answer with bytes it encoded (or cached) itself, such as GetState's reply of an unchanged state."""
    if serializer is None:
        return None

    def serialize(reply: Any) -> bytes:
        return reply if type(reply) is bytes else serializer(reply)

    return serialize


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _refuse(request)


class ErrorAndLogInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Maps exceptions to statuses, logs calls, tracks activity, and answers UNAVAILABLE (which
    clients retry) to service calls until ``ready`` is set (storage migrated and open) and while the
    server drains (SERVER_DRAINING). Health, reflection and channelz always answer."""

    def __init__(self, activity: Activity | None = None, ready: asyncio.Event | None = None) -> None:
        self.activity = activity or Activity()
        self.ready = ready
        self._built: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        # The wrapped handler of the same handler object is the same: built once per method, not
        # per call (a handler, its closures and the lenient parser per call were measurable).
        built = self._built.get(method)
        if built is not None and built[0] is handler:
            return built[1]
        wrapped = self._wrap(handler, method)
        self._built[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: Any, method: str) -> Any:
        parse = _lenient(handler.request_deserializer)
        serialize = _passthrough(handler.response_serializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, streaming=False),
                request_deserializer=parse,
                response_serializer=serialize,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, method, streaming=False),
                request_deserializer=parse,
                response_serializer=serialize,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, method, streaming=True),
                request_deserializer=parse,
                response_serializer=serialize,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._stream(handler.stream_stream, method, streaming=True),
            request_deserializer=parse,
            response_serializer=serialize,
        )

    def _unary(self, behavior: Any, method: str, streaming: bool) -> Any:
        service = _tracked_service(method)

        async def wrapper(request: Any, context: Any) -> Any:
            start, outcome = self._begin(service), ["OK"]
            try:
                self._check_ready(method)
                return await behavior(_checked(request) if streaming else _refuse(request), context)
            except Exception as error:
                await self._fail(error, context, method, outcome)
            finally:
                self._end(method, service, start, outcome[0])

        return wrapper

    def _stream(self, behavior: Any, method: str, streaming: bool) -> Any:
        service = _tracked_service(method)

        async def wrapper(request: Any, context: Any) -> AsyncIterator[Any]:
            start, outcome = self._begin(service), ["OK"]
            try:
                self._check_ready(method)
                responses = behavior(_checked(request) if streaming else _refuse(request), context)
                if inspect.isawaitable(responses):
                    # A handler that writes with context.write (grpc_health's Watch), not a generator.
                    await responses
                    return
                async for response in responses:
                    yield response
            except Exception as error:
                await self._fail(error, context, method, outcome)
            finally:
                self._end(method, service, start, outcome[0])

        return wrapper

    def _agent_upstream_call(self, method: str) -> bool:
        """While draining, whether a call may still be the agent's own: a state, memory or knowledge
        call while agent turns of this process are in flight (a turn calls its upstream services, this
        very server when it serves them all, until it ends)."""
        agent = "sessionkit.v1.AgentService"
        return _service_of(method) != agent and self.activity.service_calls[agent] > 0

    @staticmethod
    async def _fail(error: Exception, context: Any, method: str, outcome: list[str]) -> None:
        """End the call with the status for ``error`` (records its code in ``outcome``)."""
        if _is_abort(error):
            raise error
        outcome[0] = error.code.name if isinstance(error, SessionKitError) else "INTERNAL"
        await context.abort_with_status(_status_for(error, method))

    def _check_ready(self, method: str) -> None:
        if method.startswith(("/grpc.health", "/grpc.reflection", "/grpc.channelz")):
            return
        if self.activity.draining and not self._agent_upstream_call(method):
            raise reasons.SERVER_DRAINING.error()
        if self.ready is None or self.ready.is_set():
            return
        raise ServiceUnavailable(f"{method}: the server is starting and its storage is not ready yet")

    def _begin(self, service: str | None) -> float:
        self.activity.in_flight += 1
        if service is not None:
            self.activity.call_started(service)
        return time.perf_counter()

    def _end(self, method: str, service: str | None, start: float, code: str) -> None:
        self.activity.in_flight -= 1
        if service is not None:
            self.activity.call_ended(service)
        self.activity.last_active = time.monotonic()
        if code not in _QUIET_CODES or log.isEnabledFor(logging.DEBUG):
            log.info(
                "rpc",
                extra={"method": method, "code": code, "ms": round((time.perf_counter() - start) * 1e3, 3)},
            )


#: Outcomes not logged per call unless at DEBUG (a not-found read, a lost compare-and-set are normal).
_QUIET_CODES = frozenset(("OK", "NOT_FOUND", "ABORTED"))


def _tracked_service(method: str) -> str | None:
    """The service a call counts for in Activity (sessionkit's services only), once per method."""
    return _service_of(method) if method.startswith("/sessionkit.") else None


def _service_of(method: str) -> str:
    return method.split("/")[1]


def _is_abort(error: Exception) -> bool:
    # context.abort() raises this internally to end the call; it must propagate untouched.
    return type(error).__name__ == "AbortError"
