"""Client configuration: explicit arguments first, then the environment (SESSIONKIT_*)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICES = ("state", "memory", "knowledge", "agent")


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SESSIONKIT_", extra="ignore")

    #: host:port of a server with every service; unset means the embedded local server.
    address: str = ""
    state_address: str = ""
    memory_address: str = ""
    knowledge_address: str = ""
    agent_address: str = ""
    #: Where the embedded local server keeps its data.
    storage_path: str = ".sessionkit"
    #: The application name that scopes "app:" keys and every session.
    app_name: str = "default"
    #: Seconds the embedded local server stays up with no calls.
    idle_shutdown: float = 600.0
    #: API key sent with every gRPC call (``x-api-key`` metadata) when the services require one.
    api_key: str = Field("", repr=False)
    #: CA bundle (PEM) to trust: set it when the services serve TLS (then channels are secure).
    tls_ca_file: str = ""
    #: Host name to check in the services' certificate instead of the address's.
    tls_server_name: str = ""

    def targets(self, address: str | None = None) -> dict[str, str] | None:
        """Per-service gRPC targets, or None for embedded mode."""
        base = address or self.address
        overrides = {name: getattr(self, f"{name}_address") for name in SERVICES}
        if not base and not any(overrides.values()):
            return None
        return {name: overrides[name] or base for name in SERVICES if overrides[name] or base}
