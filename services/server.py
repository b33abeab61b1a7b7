"""The composition root: builds one gRPC server with the configured services, their stores (chosen
by URL), health checking, reflection, interceptors, and the lifecycle (SIGTERM -> drain)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_channelz.v1 import channelz
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sessionkit.v1 import state_pb2, state_pb2_grpc
from sessionkit_server.common.auth import server_credentials
from sessionkit_server.common.config import ServerSettings
from sessionkit_server.common.db import Database
from sessionkit_server.common.extras import require_extra
from sessionkit_server.common.health import (
    Dependency,
    DependencyMonitor,
    chroma_dependency,
    database_dependency,
)
from sessionkit_server.common.in_process import InProcessCalls, InProcessTransport
from sessionkit_server.common.interceptors import Activity, ErrorAndLogInterceptor
from sessionkit_server.state.cached_store import CachingStateStore
from sessionkit_server.state.grpc_servicer import StateServicer
from sessionkit_server.state.limits import StateLimits
from sessionkit_server.state.service import StateService
from sessionkit_server.state.sql_store import SqlStateStore
from sessionkit_server.state.store import StateStore

log = logging.getLogger("sessionkit.server")

STATE_SERVICE = state_pb2.DESCRIPTOR.services_by_name["StateService"].full_name
MEMORY_SERVICE = "sessionkit.v1.MemoryService"
KNOWLEDGE_SERVICE = "sessionkit.v1.KnowledgeService"
AGENT_SERVICE = "sessionkit.v1.AgentService"
CHANNELZ_SERVICE = "grpc.channelz.v1.Channelz"


def build_memory(settings: ServerSettings, db: Database, registrar: Any) -> Any:
    """The memory service and its servicer (imported here: the retrieval stack is heavy to import)."""
    from sessionkit.v1 import memory_pb2_grpc
    from sessionkit_server.memory.extraction import FactExtractor
    from sessionkit_server.memory.grpc_servicer import MemoryServicer
    from sessionkit_server.memory.service import MemoryService, MemorySettings
    from sessionkit_server.memory.store import MemoryStore
    from sessionkit_server.retrieval.embeddings import embedder_from_config
    from sessionkit_server.retrieval.vector_index import index_from_url

    service = MemoryService(
        MemoryStore(db),
        index_from_url(settings.vector_url, settings.data_dir),
        embedder_from_config(settings.embedding_config()),
        MemorySettings(
            short_window=settings.memory_short_window,
            short_ttl_seconds=settings.memory_short_ttl_seconds,
            merge_threshold=settings.memory_merge_threshold,
            purge_interval_seconds=settings.reap_interval_seconds,
        ),
        FactExtractor(
            settings.llm_model,
            base_url=settings.llm_base_url or None,
            api_key=settings.llm_api_key or None,
            timeout=settings.llm_timeout_seconds,
        )
        if settings.llm_configured
        else None,
        query_expander(settings),
    )
    memory_pb2_grpc.add_MemoryServiceServicer_to_server(MemoryServicer(service), registrar)  # type: ignore[no-untyped-call]
    return service


def query_expander(settings: ServerSettings) -> Any:
    """The LLM that rewrites search queries (sessionkit_server.retrieval.expansion) when
    SESSIONKIT_SEARCH_QUERY_EXPANSION is on and an LLM is configured; else None (off)."""
    if not (settings.search_query_expansion and settings.llm_configured):
        return None
    from sessionkit_server.retrieval.expansion import QueryExpander

    return QueryExpander(
        settings.llm_model,
        base_url=settings.llm_base_url or None,
        api_key=settings.llm_api_key or None,
        timeout=min(settings.llm_timeout_seconds, settings.search_query_expansion_timeout_seconds),
    )


def build_knowledge(settings: ServerSettings, db: Database, registrar: Any, memory: Any) -> Any:
    """The knowledge service and its servicer. It shares the memory service's embedder and vector index
    when memory is served too (one model and one Chroma client per process)."""
    from sessionkit.v1 import knowledge_pb2_grpc
    from sessionkit_server.knowledge.fetch import FetchSettings
    from sessionkit_server.knowledge.grpc_servicer import KnowledgeServicer
    from sessionkit_server.knowledge.service import KnowledgeService, KnowledgeSettings
    from sessionkit_server.knowledge.store import KnowledgeStore
    from sessionkit_server.retrieval.embeddings import embedder_from_config
    from sessionkit_server.retrieval.vector_index import index_from_url

    if memory is not None:
        index, embedder, owns = memory.index, memory.embedder, False
    else:
        index = index_from_url(settings.vector_url, settings.data_dir)
        embedder, owns = embedder_from_config(settings.embedding_config()), True
    service = KnowledgeService(
        KnowledgeStore(db),
        index,
        embedder,
        KnowledgeSettings(
            max_upload_bytes=settings.knowledge_max_upload_bytes,
            max_text_bytes=settings.knowledge_max_text_bytes,
            fetch=FetchSettings(
                timeout_seconds=settings.knowledge_fetch_timeout_seconds,
                max_bytes=settings.knowledge_max_url_bytes,
                max_redirects=settings.knowledge_max_redirects,
                allow_private=settings.knowledge_allow_private_urls,
                allowed_hosts=frozenset(h.lower() for h in settings.knowledge_allowed_hosts),
            ),
        ),
        owns_retrieval=owns,
        expander=query_expander(settings),
    )
    knowledge_pb2_grpc.add_KnowledgeServiceServicer_to_server(KnowledgeServicer(service), registrar)  # type: ignore[no-untyped-call]
    return service


def build_agent(
    settings: ServerSettings,
    db: Database,
    server: grpc.aio.Server,
    upstream_target: str,
    in_process: InProcessCalls | None = None,
    local: Sequence[str] = (),
) -> Any:
    """The agent service and its servicer. It calls state, memory and knowledge through the SDK's
    clients: each at its SESSIONKIT_<SERVICE>_ADDRESS when set, else at ``upstream_target`` (this server
    itself unless SESSIONKIT_AGENT_UPSTREAM_ADDRESS names another). The ``local`` services, served by
    this very server, are called in-process through ``in_process`` (same interceptors, auth, errors and
    retries; no network hop), the others over gRPC."""
    from sessionkit.knowledge_client import KnowledgeClient
    from sessionkit.memory_client import MemoryClient
    from sessionkit.retry import RetryPolicy
    from sessionkit.state_client import StateClient
    from sessionkit.transport import Transport
    from sessionkit.v1 import agent_pb2_grpc
    from sessionkit_server.agent.grpc_servicer import AgentServicer
    from sessionkit_server.agent.llm import ChatModel
    from sessionkit_server.agent.models import EndpointRouter, OfflineRouter
    from sessionkit_server.agent.service import AgentService, AgentSettings, Upstream
    from sessionkit_server.agent.store import AgentStore

    # This server's own TLS certificate is the trust root when the agent calls its own TCP port.
    ca = settings.tls_ca_file or settings.tls_cert_file
    client = settings.upstream_client_settings(upstream_target).model_copy(
        update={
            "tls_ca_file": str(ca) if ca and settings.tls_cert_file else "",
            "tls_server_name": settings.tls_server_name,
        }
    )

    def upstream(key: str | None) -> Upstream:
        transport = Transport(client, None, settings.data_dir, RetryPolicy(deadline=30.0), key or "")
        if in_process is not None and local:
            transport = InProcessTransport.over(transport, in_process, local)
        return Upstream(StateClient(transport), MemoryClient(transport), KnowledgeClient(transport))

    router: Any = (
        EndpointRouter(
            ChatModel(
                base_url=settings.llm_base_url or None,
                api_key=settings.llm_api_key or None,
                timeout=settings.llm_timeout_seconds,
            ),
            settings.llm_model,
        )
        if settings.llm_configured
        else OfflineRouter(settings.llm_timeout_seconds, settings.agent_offline_threads)
    )
    service = AgentService(
        AgentStore(db),
        upstream,
        router,
        AgentSettings(
            context_tokens=settings.agent_context_tokens,
            lease_seconds=settings.agent_lease_seconds,
            memory_after_reply=settings.agent_memory_after_reply,
        ),
    )
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(service), server)  # type: ignore[no-untyped-call]
    return service


@dataclass
class Host:
    """A built server and what it owns."""

    server: grpc.aio.Server
    port: int
    settings: ServerSettings
    health: Any
    activity: Activity
    ready: asyncio.Event
    db: Database
    state: StateService | None = None
    memory: Any = None  # sessionkit_server.memory.service.MemoryService, imported only when configured
    knowledge: Any = None  # sessionkit_server.knowledge.service.KnowledgeService, likewise
    agent: Any = None  # sessionkit_server.agent.service.AgentService, likewise
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    monitor: DependencyMonitor | None = None
    _warm_up: asyncio.Task[None] = field(init=False, repr=False)

    async def start(self) -> None:
        """Start answering (health says NOT_SERVING), make storage ready, then SERVING."""
        await self.server.start()
        try:
            if not self.db.is_postgres:
                # A SQLite file is this process's alone (its read cache relies on it).
                self.db.lock_exclusive()
            if self.state is not None:
                await self.state.store.start()
                if not self.db.read_only:  # reaping deletes: nothing to do on read-only storage
                    self.tasks.append(
                        asyncio.create_task(self.state.reap_forever(self.settings.reap_interval_seconds))
                    )
            if self.memory is not None:
                await self.memory.start()
            if self.knowledge is not None:
                await self.knowledge.start()
            if self.agent is not None:
                await self.agent.start()
        except Exception:
            await self.server.stop(0)
            await self.db.close()
            raise
        self.ready.set()
        model = self.embedding_model() if self.settings.preload_models else None
        for name in self.served_names():
            if model is None or name not in model.services:
                await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        dependencies = self.dependencies() + ([model] if model is not None else [])
        self.monitor = DependencyMonitor(
            self.health,
            dependencies,
            self.settings.health_check_interval_seconds,
            down={model.name} if model is not None else set(),
        )
        self.tasks.append(asyncio.create_task(self.monitor.run_forever()))
        if model is not None:
            # Ready once the model is loaded (seconds of CPU), not at the next round of checks.
            self.tasks.append(asyncio.create_task(self._report_when_loaded()))
        log.info(
            "serving",
            extra={
                "port": self.port,
                "services": self.settings.services,
                "socket": str(self.settings.unix_socket),
            },
        )

    def served_names(self) -> list[str]:
        names = [""]
        if self.state is not None:
            names.append(STATE_SERVICE)
        if self.memory is not None:
            names.append(MEMORY_SERVICE)
        if self.knowledge is not None:
            names.append(KNOWLEDGE_SERVICE)
        if self.agent is not None:
            names.append(AGENT_SERVICE)
        return names

    def embedding_model(self) -> Dependency | None:
        """The embedding model of memory and knowledge, loaded in the background from start-up on:
        their readiness waits for it (a replica that would take its first calls' deadlines to load a
        model is not ready), while liveness, the database and the other services do not."""
        embedders = {id(s.embedder): s.embedder for s in (self.memory, self.knowledge) if s is not None}
        if not embedders:
            return None
        names = [n for n in (MEMORY_SERVICE, KNOWLEDGE_SERVICE) if n in self.served_names()]
        self._warm_up = asyncio.create_task(self._load_models(list(embedders.values())))

        async def check() -> None:
            if self._warm_up.done() and self._warm_up.exception() is not None:
                # A failed load (an embeddings endpoint down at start) is tried again at each check.
                self._warm_up = asyncio.create_task(self._load_models(list(embedders.values())))
            await asyncio.shield(self._warm_up)

        return Dependency("embedding model", check, tuple(names))

    @staticmethod
    async def _load_models(embedders: list[Any]) -> None:
        for embedder in embedders:
            await embedder.warm_up()

    async def models_loaded(self) -> None:
        """Until the embedding model is loaded (at once when this server has none); raises what
        loading it raised."""
        warm_up = getattr(self, "_warm_up", None)
        if warm_up is not None:
            await asyncio.shield(warm_up)

    async def _report_when_loaded(self) -> None:
        with contextlib.suppress(Exception):  # the monitor's checks report and retry a failure
            await asyncio.shield(self._warm_up)
        if self.monitor is not None:
            await self.monitor.check_once()

    def dependencies(self) -> list[Dependency]:
        """What this server's services need to answer: the database (all of them) and, for memory and
        knowledge, a Chroma server when the vector index is one (an embedded index lives in-process)."""
        services = [name for name in self.served_names() if name]
        found = [database_dependency(self.db, services)] if services else []
        retrieval = [n for n in services if n in (MEMORY_SERVICE, KNOWLEDGE_SERVICE)]
        if retrieval and self.settings.vector_url.startswith(("http://", "https://")):
            timeout = max(self.settings.health_check_interval_seconds, 1.0)
            found.append(chroma_dependency(self.settings.vector_url, retrieval, timeout))
        return found

    async def stop(self, grace: float | None = None) -> None:
        """Drain: health NOT_SERVING on every name, new calls refused (SERVER_DRAINING: clients retry
        another replica), calls in flight finished within ``grace`` (default drain_seconds), then stop.
        The gRPC server keeps accepting connections meanwhile: an agent turn in flight still reaches
        this server's own state, memory and knowledge services."""
        grace = self.settings.drain_seconds if grace is None else grace
        await self.health.enter_graceful_shutdown()
        self.activity.draining = True
        if self.state is not None:
            self.state.begin_shutdown()
        for task in self.tasks:
            task.cancel()
        left = await self._finish_in_flight(grace)
        # What is left are health watches and calls past the grace: a short goodbye, then cancelled.
        await self.server.stop(min(left, 1.0))
        warm_up = getattr(self, "_warm_up", None)
        if warm_up is not None:
            warm_up.cancel()  # after the calls in flight, which may be waiting for the model
        for task in [*self.tasks, *([warm_up] if warm_up is not None else [])]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.state is not None:
            await self.state.store.close()
        if self.agent is not None:
            await self.agent.close()
        if self.knowledge is not None:
            await self.knowledge.close()
        if self.memory is not None:
            await self.memory.close()
        await self.db.close()

    async def _finish_in_flight(self, grace: float) -> float:
        """Wait up to ``grace`` seconds for the service calls in flight to end; the seconds left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        await self.activity.wait_quiet(grace)
        return max(deadline - loop.time(), 0.0)

    async def serve_until_signal(self) -> None:
        """Run until SIGTERM/SIGINT (or idle shutdown), then drain."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        idle = self.settings.idle_shutdown_seconds
        if idle > 0:
            self.tasks.append(asyncio.create_task(self._idle_watch(idle, stop)))
        await self.start()
        await stop.wait()
        log.info("draining", extra={"grace_seconds": self.settings.drain_seconds})
        await self.stop()

    async def _idle_watch(self, idle: float, stop: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(min(idle, 1.0))
            if self.activity.idle_for() >= idle:
                log.info("idle shutdown", extra={"idle_seconds": idle})
                stop.set()
                return


def _connection_age_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """Close each client connection after the maximum age (gRPC adds +-10% jitter), so a client's
    round_robin channel resolves its target again and finds replicas added since it connected."""
    if settings.max_connection_age_seconds <= 0:
        return []
    return [
        ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_seconds * 1000)),
    ]


async def create_server(
    settings: ServerSettings,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),  # type: ignore[type-arg]
) -> tuple[Host, int]:
    """Build (not start) a server for ``settings``; returns the host and the bound TCP port (0 if none).
    ``interceptors`` run inside the error mapping (so their SessionKitErrors become statuses too)."""
    for service in settings.services:
        require_extra(service)
    activity = Activity()
    ready = asyncio.Event()
    chain = [ErrorAndLogInterceptor(activity, ready), *interceptors]
    # The agent's calls to this server's own state, memory and knowledge services run in-process,
    # through the same interceptors (services/common/in_process.py).
    in_process = InProcessCalls(chain)
    server = grpc.aio.server(
        interceptors=chain,
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
            # The SDK pings every 30 s (keepalive) while a long call runs (an ingestion of a large file):
            # accept that, or gRPC's default (one ping per 5 minutes without data) answers GOAWAY
            # "too_many_pings" and the call is cut.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_ping_strikes", 0),
            *_connection_age_options(settings),
        ],
    )
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    # gRPC's own per-server counters (calls started, succeeded, failed; sockets), read with any channelz
    # client: how calls spread over replicas (`sessionkit cluster status`, tests/cluster).
    channelz.add_channelz_servicer(server)  # type: ignore[no-untyped-call, arg-type]
    read_only = settings.read_only and not settings.database_url  # SQLite only
    db = Database(settings.resolved_database_url(), read_only=read_only)
    host = Host(server, 0, settings, health_servicer, activity, ready, db)
    names = [
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
        CHANNELZ_SERVICE,
    ]

    if "state" in settings.services:
        sql_store = SqlStateStore(db, history_limit=settings.history_limit)
        # A SQLite file is locked to this process, so reads may be cached; PostgreSQL is shared by
        # replicas and is always read from the database.
        store: StateStore = sql_store if sql_store.db.is_postgres else CachingStateStore(sql_store)
        limits = StateLimits(
            max_state_bytes=settings.max_state_bytes,
            max_event_bytes=settings.max_event_bytes,
            history_limit=settings.history_limit,
            max_watchers_per_session=settings.max_watchers_per_session,
            max_watchers_per_tenant=settings.max_watchers_per_tenant,
        )
        host.state = StateService(store, limits)
        state_pb2_grpc.add_StateServiceServicer_to_server(
            StateServicer(host.state), in_process.registrar(server)
        )  # type: ignore[no-untyped-call]
        names.append(STATE_SERVICE)
    if "memory" in settings.services:
        host.memory = build_memory(settings, db, in_process.registrar(server))
        names.append(MEMORY_SERVICE)
    if "knowledge" in settings.services:
        host.knowledge = build_knowledge(settings, db, in_process.registrar(server), host.memory)
        names.append(KNOWLEDGE_SERVICE)
    if settings.unix_socket is not None:
        server.add_insecure_port(f"unix:{settings.unix_socket}")
    if settings.port >= 0:  # a negative port: unix socket only
        address = f"{settings.host}:{settings.port}"
        credentials = server_credentials(settings.tls_cert_file, settings.tls_key_file)
        host.port = (
            server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        )
    if "agent" in settings.services:
        # The agent service calls the others like any client; by default, this very server.
        upstream = settings.agent_upstream_address or (
            f"unix:{settings.unix_socket}" if settings.unix_socket is not None else f"127.0.0.1:{host.port}"
        )
        # In-process only for what the agent would otherwise reach at this very server: a service
        # served here and given no address of its own, with no other upstream named.
        local = (
            []
            if settings.agent_upstream_address
            else [
                name
                for name in ("state", "memory", "knowledge")
                if name in settings.services and not getattr(settings, f"{name}_address")
            ]
        )
        host.agent = build_agent(settings, db, server, upstream, in_process, local)
        names.append(AGENT_SERVICE)
    for name in host.served_names():
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(names, server)
    return host, host.port
