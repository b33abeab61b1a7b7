"""AsyncSession: the Session API as coroutines. This is the one implementation; Session wraps it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, overload
from urllib.parse import urlparse

from sessionkit import reasons
from sessionkit.agent import AsyncAgent
from sessionkit.agent_client import AgentClient
from sessionkit.config import ClientSettings
from sessionkit.errors import (
    FieldViolation,
    InvalidArgument,
    NotImplementedByServer,
    SessionNotFound,
    StateConflict,
)
from sessionkit.ids import DEFAULT, check_id, new_session_id, path_component
from sessionkit.jsonvalues import JsonValue, check_json
from sessionkit.knowledge_client import KnowledgeClient, ProgressCallback, check_knowledge_config
from sessionkit.memory_client import MemoryClient
from sessionkit.remote import GatewayClient
from sessionkit.remote_rest import RemoteKnowledgeClient, RemoteMemoryClient, RemoteStateClient
from sessionkit.retry import RetryPolicy
from sessionkit.state_client import Event, SessionInfo, SessionRef, StateChange, StateClient, StateVersion
from sessionkit.transport import Transport

T = TypeVar("T")
JsonObject = dict[str, JsonValue]
TEMP = "temp:"
_DELETED = object()


MEMORY_CONFIG_KEYS = {"provider", "use_embedding", "rag_db_path", "short_db", "long_db", "config"}
MEMORY_PROVIDERS = ("rag", "none", "mem0")


def check_memory_config(config: dict[str, Any]) -> None:
    """The seed's memory_config: provider "rag" (default), "mem0" (LLM fact extraction on the server)
    or "none"; the seed's path keys are accepted (data lives in the server's data directory). Anything
    else is refused, naming the key."""
    for key in config:
        if key not in MEMORY_CONFIG_KEYS:
            raise InvalidArgument(
                f"unknown memory_config key {key!r}",
                violations=[
                    FieldViolation(
                        f"memory_config.{key}", f"allowed: {', '.join(sorted(MEMORY_CONFIG_KEYS))}"
                    )
                ],
            )
    provider = config.get("provider", "rag")
    if provider not in MEMORY_PROVIDERS:
        raise InvalidArgument(
            f"unknown memory provider {provider!r}",
            violations=[FieldViolation("memory_config.provider", f"one of {', '.join(MEMORY_PROVIDERS)}")],
        )
    if config.get("use_embedding", True) is not True:
        raise NotImplementedByServer(
            "memory_config use_embedding=False is not supported yet: search is hybrid"
        )


def normalize_remote_url(url: str) -> str:
    """The seed's remote URL forms: 'host:port/agent' assumes http://; http(s) is kept."""
    url = url.strip()
    if not url:
        raise InvalidArgument("remote_url/agent_url must not be empty")
    if "://" not in url:
        url = "http://" + url
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InvalidArgument(f"remote_url/agent_url {url!r} is not an http(s) URL")
    return url


class AsyncSession:
    """A persistent session: state, an event log, and (as their services land) memory, knowledge, agents.

    With no address configured the session talks to an embedded local server that keeps its data
    under ``storage_path`` (started on first use, shared by every process using that path). With
    ``address="host:port"`` (or ``SESSIONKIT_ADDRESS``) it talks to running services.

    ``auto_save=True`` (the default) writes each change through at once. With ``auto_save=False``,
    ``set_state``/``delete_state`` changes stay in this object (``get_state`` sees them) until
    ``save_state()`` writes them all in one atomic, version-checked write; ``restore_state()``
    returns the saved state. Keys prefixed ``temp:`` are never persisted: they live in this object.
    """

    def __init__(
        self,
        session_id: str | None = None,
        user_id: str | None = DEFAULT,
        remote_url: str | None = None,
        api_key: str | None = None,
        auto_save: bool = True,
        storage_path: str | Path | None = None,
        memory_config: dict[str, Any] | None = None,
        knowledge_config: dict[str, Any] | None = None,
        timeout: float = 30,
        agent_url: str | None = None,
        *,
        address: str | None = None,
        app_name: str | None = None,
        ttl: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        settings = ClientSettings()
        self.session_id = check_id("session_id", session_id) if session_id is not None else new_session_id()
        self.user_id = check_id("user_id", DEFAULT if user_id is None else user_id)
        self.app_name = check_id("app_name", settings.app_name if app_name is None else app_name)
        if timeout is None or timeout <= 0:
            raise InvalidArgument(f"timeout must be a positive number of seconds, not {timeout!r}")
        if ttl is not None and ttl < 1:
            raise InvalidArgument(f"ttl must be at least 1 second, not {ttl!r}")
        for name, config in (("memory_config", memory_config), ("knowledge_config", knowledge_config)):
            if config is not None and not isinstance(config, dict):
                raise InvalidArgument(f"{name} must be a dict, not {type(config).__name__}")
        check_memory_config(memory_config or {})
        check_knowledge_config(knowledge_config or {})
        self.auto_save = auto_save
        self.timeout = float(timeout)
        self.ttl = ttl
        self.api_key = api_key
        self.memory_config = dict(memory_config or {})
        self.knowledge_config = dict(knowledge_config or {})
        remote = remote_url or agent_url
        self.remote_url = normalize_remote_url(remote) if remote else None
        self.storage_path = Path(storage_path if storage_path is not None else settings.storage_path)
        policy = (retry or RetryPolicy()).with_deadline(self.timeout)
        self._transport = Transport(settings, address, self.storage_path, policy, api_key=api_key)
        self._state: StateClient | RemoteStateClient
        self._memory: MemoryClient | RemoteMemoryClient
        self._knowledge: KnowledgeClient | RemoteKnowledgeClient
        #: Remote mode: HTTP to the agent URL's server; state, memory and knowledge use its REST API
        #: through clients with the gRPC clients' methods, so every method below serves both modes.
        self._remote: GatewayClient | None = None
        if self.remote_url is not None:
            self._remote = GatewayClient(self.remote_url, api_key, policy)
            self._state = RemoteStateClient(self._remote)
            self._memory = RemoteMemoryClient(self._remote)
            self._knowledge = RemoteKnowledgeClient(self._remote)
        else:
            self._state = StateClient(self._transport)
            self._memory = MemoryClient(self._transport)
            self._knowledge = KnowledgeClient(self._transport)
        self._agents = AgentClient(self._transport)
        self._ref = SessionRef(self.app_name, self.user_id, self.session_id)
        self._ensured = False
        self._temp: JsonObject = {}
        self._pending: dict[str, Any] = {}

    # -- properties ---------------------------------------------------------------------------------

    @property
    def is_remote(self) -> bool:
        """True when this session talks to a remote agent over HTTP (remote_url / agent_url)."""
        return self.remote_url is not None

    @property
    def is_embedded(self) -> bool:
        return self._transport.embedded and not self.is_remote

    @property
    def session_dir(self) -> Path | None:
        """This session's directory under storage_path (embedded mode); None when the data lives
        on remote services. Ids are rendered file-name-safe: no id can name a path outside it."""
        if not self.is_embedded:
            return None
        return self.storage_path / "sessions" / path_component(self.user_id) / path_component(self.session_id)

    @property
    def memory(self) -> SessionMemory:
        """This session's memory as one object (add, search, context, clear), e.g. for a workflow."""
        return SessionMemory(self)

    @property
    def memory_enabled(self) -> bool:
        return bool(self.memory_config.get("provider", "rag") != "none")

    @property
    def memory_provider(self) -> str:
        """memory_config's provider: "rag" (the default), "mem0" or "none"."""
        return str(self.memory_config.get("provider", "rag"))

    @property
    def knowledge(self) -> SessionKnowledge:
        """This session's knowledge as one object (add, search, list, delete, clear)."""
        return SessionKnowledge(self)

    # -- plumbing -----------------------------------------------------------------------------------

    def _check_local(self) -> None:
        """Agents run on the gRPC agent service. State, memory and knowledge work in both modes."""
        if self.is_remote:
            raise reasons.NOT_AVAILABLE_REMOTELY.error(
                what="a session agent",
                why="a remote session talks to the remote agent with chat()/send_message(); session agents "
                "run on the gRPC agent service",
            )

    async def _ensure(self) -> None:
        if not self._ensured:
            await self._state.create_session(self._ref, ttl_seconds=self.ttl, get_if_exists=True)
            self._ensured = True

    async def _ensure_session(self) -> None:
        self._check_local()
        await self._ensure()

    async def _run(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run an agent-service ``call`` on this session (gRPC only), like :meth:`_call`."""
        self._check_local()
        return await self._call(call)

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run a state ``call`` on this session (over gRPC, or the gateway's REST API in remote mode),
        (re)creating it when it does not exist (first use, deleted, expired)."""
        await self._ensure()
        try:
            return await call()
        except SessionNotFound:
            self._ensured = False
            await self._ensure()
            return await call()

    # -- state --------------------------------------------------------------------------------------

    async def save_state(
        self, data: dict[str, Any] | None = None, *, expected_version: int | None = None
    ) -> int:
        """Replace the saved state with ``data`` (``user:``/``app:`` keys in it are set in their scope;
        ``temp:`` keys are kept in this object only). Returns the new version. Unsaved ``set_state``
        changes (auto_save=False) are discarded: ``data`` is the whole new state. With no ``data``,
        writes the unsaved changes."""
        if data is None:
            return await self._flush(expected_version)
        checked = check_json(data, "state")
        if not isinstance(checked, dict):
            raise InvalidArgument(f"save_state takes a dict, not {type(data).__name__}")
        persisted = {k: v for k, v in checked.items() if not k.startswith(TEMP)}
        version = await self._call(lambda: self._state.save_state(self._ref, persisted, expected_version))
        self._temp = {k: v for k, v in checked.items() if k.startswith(TEMP)}
        self._pending.clear()
        return version

    async def restore_state(self) -> dict[str, Any]:
        """The saved state: the session's keys merged with its ``user:`` and ``app:`` keys (and this
        object's ``temp:`` keys)."""
        state, _ = await self._call(lambda: self._state.get_state(self._ref))
        state.update(self._temp)
        return state

    async def get_state(self, key: str, default: Any = None) -> Any:
        if key.startswith(TEMP):
            return self._temp.get(key, default)
        if key in self._pending:
            value = self._pending[key]
            return default if value is _DELETED else value
        state, _ = await self._call(lambda: self._state.get_state(self._ref, [key]))
        return state.get(key, default)

    async def set_state(self, key: str, value: Any, *, expected_version: int | None = None) -> int | None:
        """Set one key. Returns the new version when written through, None when kept for save_state()."""
        checked = check_json(value, key)
        if key.startswith(TEMP):
            self._temp[key] = checked
            return None
        if not self.auto_save and expected_version is None:
            self._pending[key] = checked
            return None
        return await self._call(lambda: self._state.set_value(self._ref, key, checked, expected_version))

    async def delete_state(self, key: str, *, expected_version: int | None = None) -> bool:
        """Delete one key; returns whether it existed (True when kept for save_state())."""
        if key.startswith(TEMP):
            return self._temp.pop(key, _DELETED) is not _DELETED
        if not self.auto_save and expected_version is None:
            self._pending[key] = _DELETED
            return True
        _, existed = await self._call(lambda: self._state.delete_value(self._ref, key, expected_version))
        return existed

    async def clear_state(
        self,
        *,
        include_user_scope: bool = False,
        include_app_scope: bool = False,
        expected_version: int | None = None,
    ) -> int:
        """Delete the session's own keys (and, when asked, the user's or app's shared keys)."""
        self._temp.clear()
        self._pending.clear()
        return await self._call(
            lambda: self._state.clear_state(
                self._ref,
                expected_version,
                include_user_scope=include_user_scope,
                include_app_scope=include_app_scope,
            )
        )

    async def increment_state(self, key: str, delta: int | float = 1) -> int | float:
        """Atomically add ``delta`` to a numeric key on the server (missing counts as 0); the race-free
        form of ``set_state(key, get_state(key, 0) + delta)``. Returns the new value."""
        _, value = await self._call(lambda: self._state.increment(self._ref, key, delta))
        return value

    async def append_state(self, key: str, *values: Any) -> int:
        """Atomically append values to a list key on the server (missing counts as []). Returns the length."""
        _, length = await self._call(lambda: self._state.append(self._ref, key, list(values)))
        return length

    async def state_version(self) -> int:
        return (await self.info()).version

    async def state_history(self, limit: int = 20) -> list[StateVersion]:
        """Earlier versions of the session's own keys, newest first (bounded retention on the server)."""
        versions, _ = await self._call(lambda: self._state.list_versions(self._ref, limit))
        return versions

    async def restore_state_version(self, version: int, *, expected_version: int | None = None) -> int:
        """Make an earlier version's keys current again, as a new version (returned)."""
        self._pending.clear()
        return await self._call(lambda: self._state.restore_version(self._ref, version, expected_version))

    async def watch_state(self, since_version: int = 0) -> AsyncIterator[StateChange]:
        """The current state (operation SNAPSHOT), then every change as it happens."""
        await self._ensure()
        async for change in self._state.watch(self._ref, since_version):
            yield change

    async def _flush(self, expected_version: int | None) -> int:
        pending = dict(self._pending)
        for _ in range(10):
            state, version = await self._call(lambda: self._state.get_state(self._ref))
            if not pending:
                return version
            if expected_version is not None and expected_version != version:
                raise StateConflict(f"session is at version {version}, not the expected {expected_version}")
            scoped = {k for k in pending if k.startswith(("user:", "app:"))}
            own = {k: v for k, v in state.items() if not k.startswith(("user:", "app:"))}
            for key, value in pending.items():
                if key not in scoped:
                    if value is _DELETED:
                        own.pop(key, None)
                    else:
                        own[key] = value
            own.update({k: v for k, v in pending.items() if k in scoped and v is not _DELETED})
            try:
                new_version = await self._state.save_state(self._ref, own, version)
            except StateConflict:
                if expected_version is not None:
                    raise
                continue  # someone wrote in between: re-read and apply the changes again
            for key in scoped:
                if pending[key] is _DELETED:
                    new_version, _ = await self._state.delete_value(self._ref, key)
            self._pending.clear()
            return new_version
        raise StateConflict("save_state() lost the race for the session 10 times in a row; try again")

    # -- memory ---------------------------------------------------------------------------------------

    def _check_memory(self) -> bool:
        return self.memory_enabled

    async def add_memory(
        self, text: str, memory_type: str = "long", **metadata: Any
    ) -> dict[str, Any] | None:
        """Store ``text`` in short-term (this session) or long-term (this user) memory, tagged with
        ``metadata``. ``quality_score=`` may be passed among the keyword arguments. The same text twice
        returns the existing memory (``deduplicated``); a near-duplicate is merged into it (``merged``).
        Returns the memory as a dict (None when memory_config's provider is "none").

        With provider "mem0" the text goes through LLM fact extraction instead (as the user's message
        of a turn, see ``extract_memories``): the result is ``{"operations": [...], "model": ...,
        "extraction_failed": ...}``; the memories it adds get ``quality_score`` and ``metadata``."""
        quality = metadata.pop("quality_score", None)
        if not self._check_memory():
            return None
        if self.memory_provider == "mem0":
            if not isinstance(text, str):
                raise InvalidArgument(f"memory text must be a str, not {type(text).__name__}")
            return await self._memory.extract(
                self._ref, [{"role": "user", "content": text}], memory_type, metadata, quality=quality
            )
        return await self._memory.add(self._ref, text, memory_type, quality, metadata)

    async def extract_memories(
        self,
        messages: list[dict[str, str]],
        memory_type: str = "long",
        *,
        metadata: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any] | None:
        """LLM fact extraction from one conversation turn (``[{"role": "user", "content": ...},
        {"role": "assistant", "content": ...}]``): the server's LLM compares the facts it finds with this
        user's related memories and adds, updates or deletes memories. Returns ``{"operations":
        [{"type": "ADD"|"UPDATE"|"DELETE"|"NONE", "fact", "old_text", "memory"}], "model": ...,
        "extraction_failed": bool}`` (True when the LLM's answers were unusable and the user's messages
        were stored as they are). ``dry_run=True`` decides without applying. None when memory is off
        (provider "none"). Works whatever the provider; needs an LLM configured on the server
        (``FailedPrecondition``, reason EXTRACTION_UNAVAILABLE, otherwise)."""
        if not self._check_memory():
            return None
        return await self._memory.extract(self._ref, messages, memory_type, metadata, dry_run)

    async def store_short_memory(self, content: str, **metadata: Any) -> dict[str, Any] | None:
        """Remember ``content`` for this session (bounded: the oldest are dropped beyond the window)."""
        return await self.add_memory(content, "short", **metadata)

    async def store_long_memory(
        self, content: str, quality_score: float = 0.7, **metadata: Any
    ) -> dict[str, Any] | None:
        """Remember ``content`` for this user, across all their sessions."""
        return await self.add_memory(content, "long", quality_score=quality_score, **metadata)

    async def search_memory(
        self,
        query: str,
        memory_type: str = "all",
        limit: int = 5,
        *,
        min_quality: float | None = None,
        metadata_filter: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Memories relevant to ``query`` ("all" = this session's short-term and this user's long-term),
        best first, each a dict with text, id, memory_type, score (and its components), metadata."""
        if not self._check_memory():
            return []
        return await self._memory.search(self._ref, query, memory_type, limit, min_quality, metadata_filter)

    async def get_memory_context(self, query: str, max_items: int = 3) -> str:
        """The memories relevant to ``query`` as one text block for a prompt ("" when there are none)."""
        if not self._check_memory():
            return ""
        return await self._memory.context(self._ref, query, max_items)

    async def get_context(self, query: str, max_items: int = 3) -> str:
        """Context for ``query``: up to ``max_items`` memories and up to ``max_items`` knowledge chunks,
        as one text block for a prompt ("" when there is nothing). A server without the knowledge
        service gives the memories alone."""
        parts: list[str] = []
        memory = await self.get_memory_context(query, max_items)
        if memory:
            parts.append(f"Memories:\n{memory}")
        try:
            hits = await self.search_knowledge(query, max_items)
        except NotImplementedByServer:
            hits = []
        if hits:
            lines = [f"- {h['text']} (source: {h['source']['name']})" for h in hits]
            parts.append("Knowledge:\n" + "\n".join(lines))
        return "\n\n".join(parts)

    # -- agents ---------------------------------------------------------------------------------------

    def Agent(
        self,
        name: str,
        role: str = "Assistant",
        instructions: str | None = None,
        tools: list[Any] | None = None,
        memory: bool = True,
        knowledge: list[str] | bool | None = None,
        llm: str | None = None,
        model: str | None = None,
        **kwargs: Any,
    ) -> AsyncAgent:
        """An agent bound to this session (stored with it on first use). ``tools``: Python functions
        (run in this process when the model calls them), built-in tool names ("search_memory",
        "search_knowledge", "get_state", "set_state") or tool dicts. ``knowledge``: file paths, URLs
        (added to the session) or source names the agent searches; ``llm``/``model``: the model name."""
        self._check_local()
        return AsyncAgent(
            self, self._agents, name, role, instructions, tools, memory, knowledge, llm, model, **kwargs
        )

    create_agent = Agent  # the seed's legacy name

    async def agents(self) -> list[AsyncAgent]:
        """The agents stored with this session (e.g. after restoring it in a new process)."""
        stored = await self._run(lambda: self._agents.list_agents(self._ref))
        return [AsyncAgent.from_stored(self, self._agents, a) for a in stored]

    async def get_agent(self, name: str) -> AsyncAgent:
        """One stored agent by name (NotFound when there is none)."""
        stored = await self._run(lambda: self._agents.get_agent(self._ref, name))
        return AsyncAgent.from_stored(self, self._agents, stored)

    # -- knowledge ------------------------------------------------------------------------------------

    @property
    def _chunker(self) -> dict[str, Any] | None:
        chunker = self.knowledge_config.get("chunker")
        return dict(chunker) if isinstance(chunker, dict) else None

    async def add_knowledge(
        self,
        source: str | os.PathLike[str],
        *,
        scope: str = "session",
        collection: str = "",
        name: str = "",
        content_type: str = "",
        metadata: dict[str, Any] | None = None,
        force: bool = False,
        on_progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        """Add a knowledge source: an existing file path (uploaded), an http(s):// URL (fetched by the
        service) or text. Re-adding a source of the same name replaces it ("updated") or changes nothing
        ("unchanged", same content). Returns {"kind": "file"|"url"|"text", "outcome", "source", ...}."""
        return await self._knowledge.add(
            self._ref,
            source,
            scope=scope,
            collection=collection,
            name=name,
            content_type=content_type,
            chunker=self._chunker,
            metadata=metadata,
            force=force,
            on_progress=on_progress,
        )

    async def search_knowledge(
        self,
        query: str,
        limit: int = 5,
        *,
        scopes: list[str] | None = None,
        collections: list[str] | None = None,
        source_names: list[str] | None = None,
        metadata_filter: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Hybrid search over this session's and this user's knowledge (or the given scopes): chunks,
        best first, each with text, score, source {id, name, kind}, position and heading_path."""
        return await self._knowledge.search(
            self._ref, query, limit, scopes, collections, source_names, metadata_filter
        )

    async def list_knowledge(self, scopes: list[str] | None = None) -> list[dict[str, Any]]:
        """The knowledge sources of this session and user (or the given scopes)."""
        return await self._knowledge.list_all(self._ref, scopes)

    async def delete_knowledge(self, source: str, scope: str = "session") -> bool:
        """Delete one source, by id or by name in ``scope``; False when there is none."""
        return await self._knowledge.delete(self._ref, source, scope, allow_missing=True) is not None

    async def clear_knowledge(self, scope: str = "session", collection: str = "") -> int:
        """Delete every source of this session ("session"), this user ("user") or a collection;
        returns how many sources were deleted."""
        return await self._knowledge.clear(self._ref, scope, collection)

    async def clear_memory(
        self, memory_type: str = "all", metadata_filter: dict[str, Any] | None = None
    ) -> int:
        """Delete this session's short-term memories ("short"), this user's long-term ones ("long"), or
        both ("all"); with ``metadata_filter``, only those whose metadata has these exact values.
        Returns how many were deleted."""
        if not self._check_memory():
            return 0
        if metadata_filter:
            if not isinstance(self._memory, MemoryClient):
                raise reasons.NOT_AVAILABLE_REMOTELY.error(
                    what="clear_memory(metadata_filter=...)", why="the gateway's REST API does not offer it"
                )
            return await self._memory.clear(self._ref, memory_type, metadata_filter=metadata_filter)
        return await self._memory.clear(self._ref, memory_type)

    async def add_memories(
        self, memories: list[Any], memory_type: str = "long"
    ) -> list[dict[str, Any]] | None:
        """Store many memories in one call (one transaction, one batched embedding): texts, or dicts
        {"text", "memory_type", "quality_score", "metadata"}. One memory dict per item, in order, with
        "deduplicated" / "merged". None when memory_config's provider is "none"."""
        if not self._check_memory():
            return None
        if self.memory_provider == "mem0" or not isinstance(self._memory, MemoryClient):
            # Extraction is per turn, and the REST API adds one memory per request.
            out: list[dict[str, Any]] = []
            for m in memories:
                if isinstance(m, str):
                    added = await self.add_memory(m, memory_type)
                else:  # each item's own type, quality and metadata, as add_many sends them
                    meta = dict(m.get("metadata") or {})
                    if m.get("quality_score") is not None:
                        meta["quality_score"] = m["quality_score"]
                    added = await self.add_memory(m["text"], m.get("memory_type") or memory_type, **meta)
                out.append(added or {})
            return out
        return await self._memory.add_many(self._ref, memories, memory_type)

    async def get_memory(self, memory_id: str) -> dict[str, Any]:
        return await self._memory.get(self._ref, memory_id)

    async def list_memories(
        self, memory_type: str = "all", metadata_filter: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        if not self._check_memory():
            return []
        return await self._memory.list_all(self._ref, memory_type, metadata_filter)

    async def update_memory(
        self,
        memory_id: str,
        text: str | None = None,
        *,
        metadata: dict[str, Any] | None = None,
        quality_score: float | None = None,
    ) -> dict[str, Any]:
        return await self._memory.update(self._ref, memory_id, text, metadata, quality_score)

    async def delete_memory(self, memory_id: str) -> bool:
        return await self._memory.delete(self._ref, memory_id)

    async def memory_history(self, memory_id: str) -> list[dict[str, Any]]:
        """Every change of one memory (ADD, UPDATE, MERGE, DELETE), oldest first."""
        return await self._memory.history(self._ref, memory_id)

    # -- events -------------------------------------------------------------------------------------

    async def add_event(
        self, role: str, content: str, *, author: str = "", metadata: dict[str, Any] | None = None
    ) -> Event:
        """Append to the session's event log (chat messages, tool calls, ...)."""
        return await self._call(lambda: self._state.append_event(self._ref, role, content, author, metadata))

    async def get_events(self, limit: int | None = None, *, author: str = "") -> list[Event]:
        """The most recent ``limit`` events, oldest first; every event when limit is None."""
        if limit is not None:
            if limit < 1:
                raise InvalidArgument(f"limit must be at least 1, not {limit}")
            events, _ = await self._call(
                lambda: self._state.list_events(self._ref, tail=limit, author=author)
            )
            return events
        return [event async for event in self.iter_events(author=author)]

    async def iter_events(self, *, author: str = "", page_size: int = 500) -> AsyncIterator[Event]:
        token = ""
        while True:
            events, token = await self._call(
                lambda page_token=token: self._state.list_events(
                    self._ref, page_size, page_token, author=author
                )  # type: ignore[misc]
            )
            for event in events:
                yield event
            if not token:
                return

    # -- remote agent -------------------------------------------------------------------------------

    async def test_remote_connection(self) -> bool:
        """True when the remote agent's server answers its health check (``GET <base>/health`` is 200;
        ``<base>``: the agent URL without its last path segment). False when it is unreachable or
        unhealthy, and for a session that is not remote."""
        if self._remote is None:
            return False
        return await self._remote.health()

    @overload
    async def chat(self, message: str, *, stream: Literal[False] = False, **kwargs: Any) -> str: ...

    @overload
    async def chat(self, message: str, *, stream: Literal[True], **kwargs: Any) -> AsyncIterator[str]: ...

    async def chat(self, message: str, *, stream: bool = False, **kwargs: Any) -> str | AsyncIterator[str]:
        """Send ``message`` to the remote agent (the remote agent protocol, with this session's
        session_id and user_id as context) and return its answer. ``kwargs`` are added to the request
        body (e.g. ``agent="Researcher"``, ``options={...}``). Retried on connection failures,
        502/503/504 and 429; raises ``ConnectionError`` (:class:`RemoteConnectionError`) when the agent
        cannot be reached within ``timeout``, a typed error when it refuses the request.

        ``stream=True``: an async iterator of the reply's text pieces as the agent produces them
        (``async for piece in await session.chat("hi", stream=True)``)."""
        if self._remote is None:
            raise reasons.NOT_REMOTE.error()
        if stream:
            return self._remote.chat_stream(self.session_id, self.user_id, message, kwargs)
        answer = await self._remote.chat(self.session_id, self.user_id, message, kwargs)
        return str(answer["response"])

    @overload
    async def send_message(self, message: str, *, stream: Literal[False] = False, **kwargs: Any) -> str: ...

    @overload
    async def send_message(
        self, message: str, *, stream: Literal[True], **kwargs: Any
    ) -> AsyncIterator[str]: ...

    async def send_message(
        self, message: str, *, stream: bool = False, **kwargs: Any
    ) -> str | AsyncIterator[str]:
        """The ADK-style name of :meth:`chat`."""
        return await self.chat(message, stream=stream, **kwargs)  # type: ignore[call-overload,no-any-return]

    # -- the session itself -------------------------------------------------------------------------

    async def info(self) -> SessionInfo:
        return await self._call(lambda: self._state.get_session(self._ref))

    async def delete(self) -> bool:
        """Delete the session with its state, events and history. Using it again starts it afresh."""
        self._ensured = False
        self._temp.clear()
        self._pending.clear()
        return await self._state.delete_session(self._ref, allow_missing=True)

    async def close(self) -> None:
        """Release the remote session's HTTP connections (gRPC channels are shared: nothing to do)."""
        if self._remote is not None:
            await self._remote.aclose()

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        where = self.remote_url or ("embedded:" + str(self.storage_path) if self.is_embedded else "connected")
        return f"AsyncSession(session_id={self.session_id!r}, user_id={self.user_id!r}, {where})"


class SessionKnowledge:
    """``session.knowledge``: the session's knowledge methods on one object."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, source: str | os.PathLike[str], **options: Any) -> dict[str, Any]:
        return await self.session.add_knowledge(source, **options)

    async def search(self, query: str, limit: int = 5) -> list[dict[str, Any]]:
        return await self.session.search_knowledge(query, limit)

    async def list(self) -> list[dict[str, Any]]:
        return await self.session.list_knowledge()

    async def delete(self, source: str) -> bool:
        return await self.session.delete_knowledge(source)

    async def clear(self, scope: str = "session") -> int:
        return await self.session.clear_knowledge(scope)


class SessionMemory:
    """``session.memory``: the session's memory methods on one object."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, text: str, memory_type: str = "long", **metadata: Any) -> dict[str, Any] | None:
        return await self.session.add_memory(text, memory_type, **metadata)

    async def search(self, query: str, memory_type: str = "all", limit: int = 5) -> list[dict[str, Any]]:
        return await self.session.search_memory(query, memory_type, limit)

    async def extract(
        self, messages: list[dict[str, str]], memory_type: str = "long"
    ) -> dict[str, Any] | None:
        return await self.session.extract_memories(messages, memory_type)

    async def context(self, query: str, max_items: int = 3) -> str:
        return await self.session.get_memory_context(query, max_items)

    async def clear(self, memory_type: str = "all") -> int:
        return await self.session.clear_memory(memory_type)
