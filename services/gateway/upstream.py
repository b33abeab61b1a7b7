"""The gateway's gRPC side: the SDK's own clients (StateClient, MemoryClient, KnowledgeClient and
AgentClient over a Transport), so retries, deadlines and typed errors are exactly the SDK's.

The caller's API key is forwarded as call metadata (the services' interceptor checks it again), so the
gateway holds no credentials of its own. Channels are the gateway's, one per (target, key), with a
client interceptor adding the key, and TLS when ``tls_ca_file`` is set."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.auth import API_KEY_HEADER
from services.common.config import ServerSettings
from sessionkit.config import ClientSettings
from sessionkit.knowledge_client import KnowledgeClient
from sessionkit.memory_client import MemoryClient
from sessionkit.retry import RetryPolicy
from sessionkit.state_client import StateClient
from sessionkit.transport import Transport

T = TypeVar("T")

_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.enable_retries", 0),  # the SDK's retry policy is the one that retries
]
#: gRPC health service names of the services the gateway calls.
HEALTH_NAMES = {
    "state": "sessionkit.v1.StateService",
    "memory": "sessionkit.v1.MemoryService",
    "knowledge": "sessionkit.v1.KnowledgeService",
    "agent": "sessionkit.v1.AgentService",
}


def _with_key(details: Any, key: str) -> Any:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata.add(API_KEY_HEADER, key)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


# grpc.aio sorts a channel's interceptors by type with elif: one class per kind of call.
class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, key: str) -> None:
        self.key = key

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(_with_key(client_call_details, self.key), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, key: str) -> None:
        self.key = key

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(_with_key(client_call_details, self.key), request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, key: str) -> None:
        self.key = key

    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_with_key(client_call_details, self.key), request_iterator)


class _StreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, key: str) -> None:
        self.key = key

    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_with_key(client_call_details, self.key), request_iterator)


class ChannelPool:
    """Channels of one event loop (the gateway's), one per (target, API key)."""

    def __init__(self, settings: ServerSettings) -> None:
        self._credentials: grpc.ChannelCredentials | None = None
        self._options: list[tuple[str, int | str]] = list(_CHANNEL_OPTIONS)
        if settings.tls_ca_file is not None:
            self._credentials = grpc.ssl_channel_credentials(settings.tls_ca_file.read_bytes())
            if settings.tls_server_name:
                self._options.append(("grpc.ssl_target_name_override", settings.tls_server_name))
        self._channels: dict[tuple[str, str | None], grpc.aio.Channel] = {}

    def get(self, target: str, key: str | None) -> grpc.aio.Channel:
        channel = self._channels.get((target, key))
        if channel is None:
            interceptors: list[Any] = (
                [_UnaryUnary(key), _UnaryStream(key), _StreamUnary(key), _StreamStream(key)] if key else []
            )
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(
                    target, self._credentials, options=self._options, interceptors=interceptors
                )
            else:
                channel = grpc.aio.insecure_channel(target, options=self._options, interceptors=interceptors)
            self._channels[(target, key)] = channel
        return channel

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close(None)


@dataclass
class KeyedTransport(Transport):
    """The SDK Transport, on the gateway's channels: same retries and error mapping, plus the key."""

    pool: ChannelPool | None = None
    api_key: str | None = None

    async def stub(self, service: str, stub_class: Callable[[grpc.aio.Channel], T]) -> T:
        assert self.pool is not None
        return stub_class(self.pool.get(await self.target(service), self.api_key))


@dataclass
class Clients:
    state: StateClient
    memory: MemoryClient
    knowledge: KnowledgeClient
    transport: KeyedTransport
    agent_transport: KeyedTransport

    def agent(self) -> Any:
        """The agent service's SDK client (imported late: it is optional in this version)."""
        from sessionkit.agent_client import AgentClient

        return AgentClient(self.agent_transport)


@dataclass
class Upstream:
    """Where the services are, and a set of clients per request (cheap: channels are pooled)."""

    settings: ServerSettings
    client_settings: ClientSettings
    address: str
    pool: ChannelPool = field(init=False)

    def __post_init__(self) -> None:
        self.pool = ChannelPool(self.settings)
        if self.client_settings.targets(self.address) is None:
            raise ValueError(
                "the gateway needs the services' address (--address / SESSIONKIT_UPSTREAM_ADDRESS)"
            )

    def _transport(self, api_key: str | None, deadline: float) -> KeyedTransport:
        return KeyedTransport(
            self.client_settings,
            self.address,
            Path("."),  # unused: a gateway never runs the embedded server
            RetryPolicy(deadline=deadline),
            pool=self.pool,
            api_key=api_key,
        )

    def clients(self, api_key: str | None) -> Clients:
        transport = self._transport(api_key, self.settings.upstream_timeout_seconds)
        return Clients(
            StateClient(transport),
            MemoryClient(transport),
            KnowledgeClient(transport),
            transport,
            self._transport(api_key, self.settings.agent_timeout_seconds),
        )

    def targets(self) -> dict[str, str]:
        return self.client_settings.targets(self.address) or {}

    async def health(self, per_call: float = 2.0) -> dict[str, str]:
        """Each service's gRPC health status on its target, and "overall" for every distinct target."""
        targets = self.targets()

        async def check(target: str, name: str) -> str:
            stub = health_pb2_grpc.HealthStub(self.pool.get(target, None))
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=per_call)
            except grpc.aio.AioRpcError as error:
                return "SERVICE_UNKNOWN" if error.code() == grpc.StatusCode.NOT_FOUND else "UNREACHABLE"
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

        names = list(HEALTH_NAMES)
        results = await asyncio.gather(*(check(targets[s], HEALTH_NAMES[s]) for s in names if s in targets))
        statuses = dict(zip([s for s in names if s in targets], results, strict=True))
        overall = await asyncio.gather(*(check(t, "") for t in sorted(set(targets.values()))))
        statuses["overall"] = "SERVING" if overall and all(s == "SERVING" for s in overall) else "NOT_SERVING"
        return statuses
