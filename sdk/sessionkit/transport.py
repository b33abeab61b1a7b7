"""Where the services are and how one call reaches them: targets (connected or embedded), one
channel per target and event loop, typed errors and retries around every call."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from sessionkit.config import ClientSettings
from sessionkit.embedded import ensure_local_server
from sessionkit.errors import InvalidArgument, NotImplementedByServer, ServiceUnavailable, from_rpc_error
from sessionkit.retry import RetryPolicy, call_with_retry

T = TypeVar("T")
_EOF = grpc.aio.EOF  # type: ignore[attr-defined]

_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.enable_retries", 0),  # retries are ours (idempotency keys make writes safe to repeat)
]

# Channels are bound to an event loop: one per (loop, target), shared by every Session on that loop.
_channels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, grpc.aio.Channel]] = (
    weakref.WeakKeyDictionary()
)


def channel_for(target: str) -> grpc.aio.Channel:
    loop = asyncio.get_running_loop()
    per_loop = _channels.setdefault(loop, {})
    channel = per_loop.get(target)
    if channel is None:
        channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        per_loop[target] = channel
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

    def __post_init__(self) -> None:
        self._targets = self.settings.targets(self.address)
        self._local_target: str | None = None

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
        return stub_class(channel_for(await self.target(service)))

    async def unary(self, service: str, stub_class: Any, method: str, request: Any) -> Any:
        """One unary call with retries; raises the typed SessionKitError on failure."""

        async def attempt(remaining: float) -> Any:
            stub = await self.stub(service, stub_class)
            try:
                return await getattr(stub, method)(request, timeout=remaining)
            except grpc.RpcError as error:
                raise self._error(service, error) from None

        return await call_with_retry(attempt, self.policy, self._before_retry)

    async def stream(self, service: str, stub_class: Any, method: str, request: Any) -> AsyncIterator[Any]:
        """A server stream; (re)connection is retried until the first message arrives."""
        call_holder: list[Any] = []

        async def attempt(remaining: float) -> Any:
            stub = await self.stub(service, stub_class)
            call = getattr(stub, method)(request)
            call_holder[:] = [call]
            try:
                return await call.read()
            except grpc.RpcError as error:
                raise self._error(service, error) from None

        first = await call_with_retry(attempt, self.policy, self._before_retry)
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
        if isinstance(typed, NotImplementedByServer):
            return NotImplementedByServer(
                f"the {service} service is not available on this server: {typed.message}", reason=typed.reason
            )
        if isinstance(typed, ServiceUnavailable) and not typed.metadata:
            typed.message = f"{service} service unavailable: {typed.message}"
        return typed

    async def _before_retry(self, error: BaseException) -> None:
        # An idle-stopped or killed embedded server is restarted before the next attempt.
        if self._targets is None and isinstance(error, ServiceUnavailable):
            self._local_target = await asyncio.to_thread(
                ensure_local_server, self.storage_path, self.settings.idle_shutdown
            )
