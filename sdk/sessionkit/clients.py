"""The one client interface per service that a session talks through, and the choice of its
implementation, made once per session: gRPC (state_client, memory_client, knowledge_client,
agent_client, over Transport) or the gateway's REST API (remote_rest, over GatewayClient) for a
session created with ``agent_url``/``remote_url``.

Both implementations satisfy these Protocols (mypy checks it where :func:`open_clients` builds them),
so the session code above them has no ``isinstance`` checks: a call either works in both modes or the
REST client raises NotImplementedByServer (reason NOT_AVAILABLE_REMOTELY) naming it. Agents run on the
gRPC agent service only: a remote session has none (``Clients.agents`` is None)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sessionkit.agent_client import AgentClient
from sessionkit.jsonvalues import JsonValue
from sessionkit.knowledge_client import KnowledgeClient, ProgressCallback
from sessionkit.memory_client import MemoryClient
from sessionkit.remote import GatewayClient
from sessionkit.remote_rest import RemoteStateClient
from sessionkit.remote_rest_knowledge import RemoteKnowledgeClient
from sessionkit.remote_rest_memory import RemoteMemoryClient
from sessionkit.retry import RetryPolicy
from sessionkit.state_client import Event, SessionInfo, SessionRef, StateChange, StateClient, StateVersion
from sessionkit.transport import Transport

JsonObject = dict[str, JsonValue]


class StateAPI(Protocol):
    """Sessions, their state, versions and events."""

    async def create_session(
        self,
        ref: SessionRef,
        *,
        ttl_seconds: int | None = None,
        initial_state: JsonObject | None = None,
        get_if_exists: bool = True,
    ) -> tuple[SessionInfo, bool]: ...

    async def get_session(self, ref: SessionRef) -> SessionInfo: ...

    async def delete_session(self, ref: SessionRef, allow_missing: bool = False) -> bool: ...

    async def get_state(self, ref: SessionRef, keys: list[str] | None = None) -> tuple[JsonObject, int]: ...

    async def save_state(
        self,
        ref: SessionRef,
        state: JsonObject,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        delete_keys: Sequence[str] = (),
    ) -> int: ...

    async def set_value(
        self,
        ref: SessionRef,
        key: str,
        value: Any,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> int: ...

    async def delete_value(
        self,
        ref: SessionRef,
        key: str,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[int, bool]: ...

    async def clear_state(
        self,
        ref: SessionRef,
        expected_version: int | None = None,
        *,
        include_user_scope: bool = False,
        include_app_scope: bool = False,
        idempotency_key: str | None = None,
    ) -> int: ...

    async def increment(
        self,
        ref: SessionRef,
        key: str,
        delta: float = 1,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[int, int | float]: ...

    async def append(
        self,
        ref: SessionRef,
        key: str,
        values: list[Any],
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[int, int]: ...

    def watch(self, ref: SessionRef, since_version: int = 0) -> AsyncIterator[StateChange]: ...

    async def list_versions(
        self, ref: SessionRef, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[StateVersion], str]: ...

    async def restore_version(
        self,
        ref: SessionRef,
        version: int,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> int: ...

    async def append_event(
        self,
        ref: SessionRef,
        role: str,
        content: str,
        author: str = "",
        metadata: JsonObject | None = None,
        idempotency_key: str | None = None,
    ) -> Event: ...

    async def list_events(
        self, ref: SessionRef, page_size: int = 0, page_token: str = "", tail: int = 0, author: str = ""
    ) -> tuple[list[Event], str]: ...


class MemoryAPI(Protocol):
    """Short- and long-term memories: writes, search, context, extraction, history."""

    async def add(
        self,
        ref: SessionRef,
        text: str,
        kind: str = "long",
        quality_score: float | None = None,
        metadata: dict[str, JsonValue] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]: ...

    async def add_many(
        self,
        ref: SessionRef,
        memories: Any,
        kind: str = "long",
        skip_merge: bool = False,
        idempotency_key: str | None = None,
    ) -> list[dict[str, Any]]: ...

    async def search(
        self,
        ref: SessionRef,
        query: str,
        kind: str = "all",
        limit: int = 5,
        min_quality: float | None = None,
        metadata_filter: dict[str, JsonValue] | None = None,
        explain: bool = False,
    ) -> list[dict[str, Any]]: ...

    async def context(self, ref: SessionRef, query: str, max_items: int = 3, kind: str = "all") -> str: ...

    async def extract(
        self,
        ref: SessionRef,
        messages: Any,
        kind: str = "long",
        metadata: dict[str, JsonValue] | None = None,
        dry_run: bool = False,
        idempotency_key: str | None = None,
        quality: float | None = None,
    ) -> dict[str, Any]: ...

    async def clear(
        self,
        ref: SessionRef,
        kind: str = "all",
        idempotency_key: str | None = None,
        metadata_filter: dict[str, JsonValue] | None = None,
    ) -> int: ...

    async def get(self, ref: SessionRef, memory_id: str) -> dict[str, Any]: ...

    async def list_all(
        self, ref: SessionRef, kind: str = "all", metadata_filter: dict[str, JsonValue] | None = None
    ) -> list[dict[str, Any]]: ...

    async def update(
        self,
        ref: SessionRef,
        memory_id: str,
        text: str | None = None,
        metadata: dict[str, JsonValue] | None = None,
        quality_score: float | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]: ...

    async def delete(self, ref: SessionRef, memory_id: str, idempotency_key: str | None = None) -> bool: ...

    async def history(self, ref: SessionRef, memory_id: str) -> list[dict[str, Any]]: ...


class KnowledgeAPI(Protocol):
    """Knowledge sources: add (text, URL, file), search, list, delete, clear."""

    async def add(
        self,
        ref: SessionRef,
        source: str | os.PathLike[str],
        *,
        scope: str = "session",
        collection: str = "",
        name: str = "",
        content_type: str = "",
        chunker: dict[str, Any] | None = None,
        metadata: dict[str, JsonValue] | None = None,
        force: bool = False,
        on_progress: ProgressCallback | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]: ...

    async def search(
        self,
        ref: SessionRef,
        query: str,
        limit: int = 5,
        scopes: list[str] | None = None,
        collections: list[str] | None = None,
        source_names: list[str] | None = None,
        metadata_filter: dict[str, JsonValue] | None = None,
        explain: bool = False,
    ) -> list[dict[str, Any]]: ...

    async def list_all(self, ref: SessionRef, scopes: list[str] | None = None) -> list[dict[str, Any]]: ...

    async def delete(
        self, ref: SessionRef, source: str, scope: str = "session", allow_missing: bool = False
    ) -> int | None: ...

    async def clear(self, ref: SessionRef, scope: str = "session", collection: str = "") -> int: ...


class AgentAPI(Protocol):
    """Session-bound agents and workflows (the gRPC agent service)."""

    async def create_agent(
        self, ref: SessionRef, definition: Mapping[str, Any], if_exists: str = "get"
    ) -> dict[str, Any]: ...

    async def get_agent(self, ref: SessionRef, name: str) -> dict[str, Any]: ...

    async def list_agents(self, ref: SessionRef) -> list[dict[str, Any]]: ...

    async def delete_agent(self, ref: SessionRef, name: str, allow_missing: bool = True) -> bool: ...

    async def chat(
        self,
        ref: SessionRef,
        agent_name: str,
        message: str,
        *,
        options: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]: ...

    def chat_stream(
        self,
        ref: SessionRef,
        agent_name: str,
        message: str,
        *,
        stream: bool = True,
        tools: Mapping[str, Callable[..., Any]] | None = None,
        offer: list[Callable[..., Any]] | None = None,
        options: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]: ...

    def run_workflow(
        self,
        ref: SessionRef,
        tasks: Sequence[Mapping[str, Any]],
        *,
        input: str = "",
        stream: bool = False,
        options: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]: ...


@dataclass(frozen=True)
class Clients:
    """One session's clients, one per service, all of one transport."""

    state: StateAPI
    memory: MemoryAPI
    knowledge: KnowledgeAPI
    #: None for a remote (HTTP) session: agents need the gRPC agent service.
    agents: AgentAPI | None
    #: The HTTP client of a remote session (its chat turns and health check); None over gRPC.
    gateway: GatewayClient | None


def open_clients(
    transport: Transport, remote_url: str | None, api_key: str | None, policy: RetryPolicy
) -> Clients:
    """The session's clients: the gateway's REST API when ``remote_url`` is set, else gRPC."""
    if remote_url is not None:
        gateway = GatewayClient(remote_url, api_key, policy)
        return Clients(
            state=RemoteStateClient(gateway),
            memory=RemoteMemoryClient(gateway),
            knowledge=RemoteKnowledgeClient(gateway),
            agents=None,
            gateway=gateway,
        )
    return Clients(
        state=StateClient(transport),
        memory=MemoryClient(transport),
        knowledge=KnowledgeClient(transport),
        agents=AgentClient(transport),
        gateway=None,
    )
