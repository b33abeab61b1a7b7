"""What every AsyncSession is made of: its identity and settings, the transport chosen once
(sessionkit.clients), creating the session on first use, and the session's own lifecycle. The
behaviours are in the mixins beside it: session_state (state and events), session_memory,
session_knowledge; async_session puts them together with agents and remote chat."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import urlparse

from sessionkit import reasons
from sessionkit.clients import AgentAPI, KnowledgeAPI, MemoryAPI, StateAPI, open_clients
from sessionkit.config import ClientSettings
from sessionkit.errors import (
    FieldViolation,
    InvalidArgument,
    NotImplementedByServer,
    SessionNotFound,
)
from sessionkit.ids import DEFAULT, check_id, new_session_id, path_component
from sessionkit.jsonvalues import JsonValue
from sessionkit.knowledge_client import check_knowledge_config
from sessionkit.remote import GatewayClient
from sessionkit.retry import RetryPolicy
from sessionkit.state_client import SessionInfo, SessionRef
from sessionkit.transport import Transport

T = TypeVar("T")
JsonObject = dict[str, JsonValue]
TEMP = "temp:"
SCOPES = ("user:", "app:")
#: A deletion kept for save_state() (auto_save=False).
DELETED = object()


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


class SessionCore:
    """The parts of a session that every behaviour uses (see AsyncSession for the documentation)."""

    session_id: str
    user_id: str
    app_name: str
    auto_save: bool
    timeout: float
    ttl: int | None
    api_key: str | None
    memory_config: dict[str, Any]
    knowledge_config: dict[str, Any]
    remote_url: str | None
    storage_path: Path

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
        # The one choice of transport: every method below calls these clients the same way in both modes.
        clients = open_clients(self._transport, self.remote_url, api_key, policy)
        self._state: StateAPI = clients.state
        self._memory: MemoryAPI = clients.memory
        self._knowledge: KnowledgeAPI = clients.knowledge
        self._agents: AgentAPI | None = clients.agents
        self._remote: GatewayClient | None = clients.gateway
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
    def memory_enabled(self) -> bool:
        return bool(self.memory_config.get("provider", "rag") != "none")

    @property
    def memory_provider(self) -> str:
        """memory_config's provider: "rag" (the default), "mem0" or "none"."""
        return str(self.memory_config.get("provider", "rag"))

    # -- plumbing -----------------------------------------------------------------------------------

    def _agent_client(self) -> AgentAPI:
        """Agents run on the gRPC agent service. State, memory and knowledge work in both modes."""
        if self._agents is None:
            raise reasons.NOT_AVAILABLE_REMOTELY.error(
                what="a session agent",
                why="a remote session talks to the remote agent with chat()/send_message(); session agents "
                "run on the gRPC agent service",
            )
        return self._agents

    async def _ensure(self) -> None:
        if not self._ensured:
            await self._state.create_session(self._ref, ttl_seconds=self.ttl, get_if_exists=True)
            self._ensured = True

    async def _ensure_session(self) -> None:
        self._agent_client()
        await self._ensure()

    async def _run(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run an agent-service ``call`` on this session (gRPC only), like :meth:`_call`."""
        self._agent_client()
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

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        where = self.remote_url or ("embedded:" + str(self.storage_path) if self.is_embedded else "connected")
        return f"AsyncSession(session_id={self.session_id!r}, user_id={self.user_id!r}, {where})"
