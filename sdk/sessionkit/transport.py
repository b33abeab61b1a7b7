"""Where the services are and how one call reaches them: targets (connected or embedded), one
channel per target and event loop, typed errors and retries around every call."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from sessionkit import reasons
from sessionkit.config import ClientSettings
from sessionkit.embedded import ensure_local_server
from sessionkit.errors import InvalidArgument, ServiceUnavailable, from_rpc_error
from sessionkit.retry import RetryPolicy

T = TypeVar("T")
_EOF = grpc.aio.EOF  # type: ignore[attr-defined]
API_KEY_METADATA = "x-api-key"

_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.enable_retries", 0),  # retries are ours (idempotency keys make writes safe to repeat)
    # A channel whose server went away fails every call until its next reconnect attempt; gRPC's
    # default backoff grows to 120 s, far past our retry deadline, so a restarted server (or a new one on
    # the same port) would go unnoticed. Reconnect attempts at most a second apart.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Every address of the target (a dns:/// name's records, an ipv4:/ipv6: list) gets calls in turn;
    # gRPC's default, pick_first, sends all of a channel's calls to one replica.
    ("grpc.lb_policy_name", "round_robin"),
    # A server's maximum connection age (or a replica going away) makes the channel resolve the name
    # again, at most this often (default 30 s): a scale-up is picked up within seconds.
    ("grpc.dns_min_time_between_resolutions_ms", 2000),
]

#: Which channel: the target, the API key its calls carry, the TLS trust (CA file, server name) and the
#: keepalive (seconds between pings, seconds to wait for the answer).
ChannelKey = tuple[str, str, str, str, float, float]
#: Keepalive when none is given: ClientSettings' defaults.
DEFAULT_KEEPALIVE = (10.0, 10.0)

# Channels are bound to an event loop: one per (loop, target, key, TLS), shared by every Session on it.
_channels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[ChannelKey, grpc.aio.Channel]] = (
    weakref.WeakKeyDictionary()
)


def _with_key(details: Any, key: str) -> Any:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata.add(API_KEY_METADATA, key)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


# grpc.aio sorts a channel's interceptors by type: one class per kind of call.
class _KeyUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, key: str) -> None:
        self.key = key

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_key(details, self.key), request)


class _KeyUnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, key: str) -> None:
        self.key = key

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_key(details, self.key), request)


class _KeyStreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, key: str) -> None:
        self.key = key

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_with_key(details, self.key), requests)


class _KeyStreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, key: str) -> None:
        self.key = key

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_with_key(details, self.key), requests)


def _keepalive_options(keepalive: tuple[float, float]) -> list[tuple[str, Any]]:
    """Pings on open calls, so a server that stopped answering (SIGSTOP, a dead host, a cut network:
    nothing closes the connection) fails a long stream within ``sum(keepalive)`` seconds instead of
    leaving it waiting forever (a watch has no deadline)."""
    every, timeout = keepalive
    return [
        ("grpc.keepalive_time_ms", int(every * 1000)),
        ("grpc.keepalive_timeout_ms", int(timeout * 1000)),
        # gRPC >= 1.6x waits for a ping's answer this long (default a minute), whatever the keepalive's.
        ("grpc.http2.ping_timeout_ms", int(timeout * 1000)),
        # gRPC stops pinging after two pings with no data frame between them; a quiet watch sends none.
        ("grpc.http2.max_pings_without_data", 0),
    ]


def channel_for(
    target: str,
    api_key: str = "",
    ca_file: str = "",
    server_name: str = "",
    keepalive: tuple[float, float] = DEFAULT_KEEPALIVE,
) -> grpc.aio.Channel:
    """The loop's channel to ``target``; with ``api_key`` every call carries it (``x-api-key``), with
    ``ca_file`` the channel is TLS, trusting that CA (``server_name`` overrides the name checked).
    ``keepalive``: seconds between pings on open calls, and seconds to wait for the answer."""
    loop = asyncio.get_running_loop()
    per_loop = _channels.setdefault(loop, {})
    key: ChannelKey = (target, api_key, ca_file, server_name, *keepalive)
    channel = per_loop.get(key)
    if channel is None:
        interceptors: list[Any] = (
            [
                _KeyUnaryUnary(api_key),
                _KeyUnaryStream(api_key),
                _KeyStreamUnary(api_key),
                _KeyStreamStream(api_key),
            ]
            if api_key
            else []
        )
        options: list[tuple[str, Any]] = [*_CHANNEL_OPTIONS, *_keepalive_options(keepalive)]
        if ca_file and not target.startswith("unix:"):
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            credentials = grpc.ssl_channel_credentials(Path(ca_file).read_bytes())
            channel = grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)
        else:
            channel = grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
        per_loop[key] = channel
    return channel


async def close_channels() -> None:
    """Close this loop's channels (Session.close() of the last session, and tests)."""
    per_loop = _channels.pop(asyncio.get_running_loop(), {})
    for channel in per_loop.values():
        await channel.close(None)


@dataclass
class Transport:
    """Resolves targets lazily (starting the embedded server on first use) and runs calls."""

    settings: ClientSettings
    address: str | None
    storage_path: Path
    policy: RetryPolicy
    #: Sent with every call; None: the settings' (SESSIONKIT_API_KEY). The embedded server needs none.
    api_key: str | None = None

    def __post_init__(self) -> None:
        try:
            self._targets = self.settings.targets(self.address)
        except ValueError as error:
            raise reasons.INVALID_ARGUMENT.error(detail=f"address: {error}") from None
        self._local_target: str | None = None
        # Each stub class's stub with the channel it was built on: a stub builds a callable per
        # method of its service (15 for the state service), which cost more than a call's own work.
        self._stubs: dict[Any, tuple[grpc.aio.Channel, Any]] = {}

    @property
    def embedded(self) -> bool:
        return self._targets is None

    async def target(self, service: str) -> str:
        if self._targets is None:
            # Found (or started) once; if it stops later, the retry hook starts it again.
            if self._local_target is None:
                self._local_target = await asyncio.to_thread(
                    ensure_local_server, self.storage_path, self.settings.idle_shutdown
                )
            return self._local_target
        target = self._targets.get(service)
        if not target:
            raise InvalidArgument(
                f"no address for the {service} service: set address=, SESSIONKIT_ADDRESS "
                f"or SESSIONKIT_{service.upper()}_ADDRESS"
            )
        return target

    async def stub(self, service: str, stub_class: Callable[[grpc.aio.Channel], T]) -> T:
        target = await self.target(service)
        keepalive = (self.settings.keepalive_seconds, self.settings.keepalive_timeout)
        if self._targets is None:  # the embedded server: a local socket, no keys, no TLS
            channel = channel_for(target, keepalive=keepalive)
        else:
            key = self.settings.api_key if self.api_key is None else self.api_key
            settings = self.settings
            channel = channel_for(target, key, settings.tls_ca_file, settings.tls_server_name, keepalive)
        cached = self._stubs.get(stub_class)
        if cached is not None and cached[0] is channel:  # the same loop's same channel
            stub: T = cached[1]
            return stub
        stub = stub_class(channel)
        self._stubs[stub_class] = (channel, stub)
        return stub

    async def unary(
        self, service: str, stub_class: Any, method: str, request: Any, *, idempotent: bool = True
    ) -> Any:
        """One unary call with retries; raises the typed SessionKitError on failure. ``idempotent``:
        False for the few writes without an idempotency key, repeated only when that is harmless."""

        async def attempt(remaining: float) -> Any:
            stub = await self.stub(service, stub_class)
            try:
                return await getattr(stub, method)(request, timeout=remaining)
            except grpc.RpcError as error:
                raise self._error(service, error) from None

        return await self.retry(attempt, idempotent=idempotent)

    async def retry(self, attempt: Callable[[float], Awaitable[T]], *, idempotent: bool = True) -> T:
        """``attempt(seconds left)`` under the session's retry policy, restarting the embedded server
        between attempts when it went away (streams and uploads use this directly)."""
        return await self.policy.call(attempt, idempotent=idempotent, before_retry=self._before_retry)

    async def stream(
        self, service: str, stub_class: Any, method: str, request: Any, *, prompt_start: bool = False
    ) -> AsyncIterator[Any]:
        """A server stream; (re)connection is retried until the first message arrives. The stream has
        no deadline (a watch lasts as long as it is read, an ingestion as long as it works): the
        channel's keepalive pings end it when the server stops answering. ``prompt_start``: the
        server answers the first message at once (a watch's snapshot), so waiting for it is bounded by
        the call's deadline too."""
        call_holder: list[Any] = []

        async def attempt(remaining: float) -> Any:
            stub = await self.stub(service, stub_class)
            call = getattr(stub, method)(request)
            call_holder[:] = [call]
            try:
                async with asyncio.timeout(remaining if prompt_start else None):
                    return await call.read()
            except grpc.RpcError as error:
                raise self._error(service, error) from None
            except TimeoutError:
                call.cancel()
                raise reasons.DEADLINE_EXCEEDED.error(
                    detail=f"the {service} service did not start the {method} stream within "
                    f"{self.policy.deadline:g}s"
                ) from None

        first = await self.retry(attempt)
        call = call_holder[0]
        try:
            if first is _EOF:
                return
            yield first
            while True:
                try:
                    message = await call.read()
                except grpc.RpcError as error:
                    raise self._error(service, error) from None
                if message is _EOF:
                    return
                yield message
        finally:
            call.cancel()

    def _error(self, service: str, error: grpc.RpcError) -> Exception:
        typed = from_rpc_error(error)
        if reasons.UNIMPLEMENTED.matches(typed):
            typed.message = f"the {service} service is not available on this server: {typed.message}"
        elif isinstance(typed, ServiceUnavailable):
            # gRPC reports a connection that could not be opened this way: the request never left,
            # so even a call without an idempotency key may be repeated (the retry policy reads it).
            typed.sent = "failed to connect" not in typed.message.lower()  # type: ignore[attr-defined]
            if "ping timeout" in typed.message or "keepalive" in typed.message.lower():
                typed.message = (
                    f"the {service} service stopped answering (no answer to a keepalive ping within "
                    f"{self.settings.keepalive_timeout:g}s): {typed.message}"
                )
            elif not typed.metadata:
                typed.message = f"{service} service unavailable: {typed.message}"
        typed.args = (typed.message,)
        return typed

    async def _before_retry(self, error: BaseException) -> None:
        # An idle-stopped or killed embedded server is restarted before the next attempt.
        if self._targets is None and isinstance(error, ServiceUnavailable):
            self._local_target = await asyncio.to_thread(
                ensure_local_server, self.storage_path, self.settings.idle_shutdown
            )
