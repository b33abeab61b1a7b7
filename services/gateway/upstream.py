"""The gateway's gRPC side: the SDK's own clients (StateClient, MemoryClient, KnowledgeClient and
AgentClient over a Transport), so retries, deadlines and typed errors are exactly the SDK's.

The caller's API key is forwarded as call metadata (the services' interceptor checks it again), so the
gateway holds no credentials of its own: the SDK's Transport with ``api_key``, whose channels (one per
target, key and TLS trust) add it, with TLS when ``tls_ca_file`` is set."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sessionkit.config import ClientSettings
from sessionkit.knowledge_client import KnowledgeClient
from sessionkit.memory_client import MemoryClient
from sessionkit.retry import RetryPolicy
from sessionkit.state_client import StateClient
from sessionkit.transport import Transport, channel_for
from sessionkit_server.common.config import ServerSettings

T = TypeVar("T")

#: gRPC health service names of the services the gateway calls.
HEALTH_NAMES = {
    "state": "sessionkit.v1.StateService",
    "memory": "sessionkit.v1.MemoryService",
    "knowledge": "sessionkit.v1.KnowledgeService",
    "agent": "sessionkit.v1.AgentService",
}


#: How many API keys' clients the gateway keeps built.
MAX_CACHED_KEYS = 1024


@dataclass
class Clients:
    state: StateClient
    memory: MemoryClient
    knowledge: KnowledgeClient
    transport: Transport
    agent_transport: Transport

    def agent(self) -> Any:
        """The agent service's SDK client (imported late: it is optional in this version)."""
        from sessionkit.agent_client import AgentClient

        return AgentClient(self.agent_transport)


@dataclass
class Upstream:
    """Where the services are, and a set of clients per request (cheap: the SDK pools the channels,
    one per target, key and TLS trust)."""

    settings: ServerSettings
    client_settings: ClientSettings
    address: str

    def __post_init__(self) -> None:
        self._clients: dict[str | None, Clients] = {}
        if self.client_settings.targets(self.address) is None:
            raise ValueError(
                "the gateway needs the services' address (--address / SESSIONKIT_UPSTREAM_ADDRESS, or "
                "each service's SESSIONKIT_STATE_ADDRESS, SESSIONKIT_MEMORY_ADDRESS, ...)"
            )
        # The gateway's own TLS trust for its upstream; keys are the callers', never the environment's.
        self.client_settings = self.client_settings.model_copy(
            update={
                "tls_ca_file": str(self.settings.tls_ca_file or ""),
                "tls_server_name": self.settings.tls_server_name,
                "api_key": "",
            }
        )

    def _transport(self, api_key: str | None, deadline: float) -> Transport:
        return Transport(
            self.client_settings,
            self.address,
            Path("."),  # unused: a gateway never runs the embedded server
            RetryPolicy(deadline=deadline),
            api_key=api_key or "",
        )

    def clients(self, api_key: str | None) -> Clients:
        """The clients of the callers with ``api_key``, built once per key: they hold no state of a
        request (each call takes its own deadline), and building them per request (transports,
        their stubs) was a measurable part of a REST call."""
        cached = self._clients.get(api_key)
        if cached is not None:
            return cached
        transport = self._transport(api_key, self.settings.upstream_timeout_seconds)
        clients = Clients(
            StateClient(transport),
            MemoryClient(transport),
            KnowledgeClient(transport),
            transport,
            self._transport(api_key, self.settings.agent_timeout_seconds),
        )
        if len(self._clients) >= MAX_CACHED_KEYS:
            self._clients.clear()  # bounded: many keys only cost rebuilding, never memory
        self._clients[api_key] = clients
        return clients

    def targets(self) -> dict[str, str]:
        return self.client_settings.targets(self.address) or {}

    async def health(self, per_call: float = 2.0) -> dict[str, str]:
        """Each service's gRPC health status on its target, and "overall" for every distinct target."""
        targets = self.targets()

        async def check(target: str, name: str) -> str:
            settings = self.client_settings
            channel = channel_for(target, "", settings.tls_ca_file, settings.tls_server_name)
            stub = health_pb2_grpc.HealthStub(channel)
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
