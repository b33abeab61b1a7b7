"""Client configuration: explicit arguments first, then the environment (SESSIONKIT_*)."""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICES = ("state", "memory", "knowledge", "agent")
#: Target schemes gRPC resolves itself (a list after ipv4:/ipv6: is already gRPC's own syntax).
_GRPC_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:")


def grpc_target(value: str) -> str:
    """The gRPC target of an address setting. ``host:port``, ``dns:///name:port``,
    ``dns://DNS-SERVER/name:port``, ``unix:PATH`` and gRPC's other target URIs pass unchanged; a
    comma-separated list of IP addresses (``10.0.0.1:50051,10.0.0.2:50051``) becomes gRPC's
    multi-address target (``ipv4:...`` or ``ipv6:...``), whose addresses channels balance round-robin.
    Raises ValueError naming the entry that is not ``IP:port``."""
    value = value.strip()
    if "," not in value or value.startswith(_GRPC_SCHEMES):
        return value
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    versions = {_ip_version(entry, value) for entry in entries}
    if len(versions) > 1:
        raise ValueError(f"address list {value!r} mixes IPv4 and IPv6; gRPC takes one family per list")
    return f"ipv{versions.pop()}:{','.join(entries)}"


def _ip_version(entry: str, whole: str) -> int:
    host, sep, port = entry.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{entry!r} in the address list {whole!r} is not IP:port")
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).version
    except ValueError:
        raise ValueError(
            f"{entry!r} in the address list {whole!r}: a list takes IP addresses only (IP:port, "
            "[IPv6]:port); for a host name give one target, dns:///NAME:PORT: every address it "
            "resolves to is used"
        ) from None


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SESSIONKIT_", extra="ignore")

    #: gRPC target of a server with every service (host:port, dns:///name:port or a list of IP:port
    #: separated by commas); unset means the embedded local server.
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
    #: While a call is open (a watch, a streamed turn, a long upload) the channel pings the server after
    #: this many seconds without traffic, and fails the call (UNAVAILABLE) when no answer comes within
    #: ``keepalive_timeout``: a stopped or unreachable server ends a stream within their sum. The servers
    #: accept pings as often as every second.
    keepalive_seconds: float = Field(10.0, ge=1, le=3600)
    keepalive_timeout: float = Field(10.0, ge=1, le=3600)

    @field_validator("address", "state_address", "memory_address", "knowledge_address", "agent_address")
    @classmethod
    def _target(cls, value: str) -> str:
        return grpc_target(value)

    def targets(self, address: str | None = None) -> dict[str, str] | None:
        """Per-service gRPC targets, or None for embedded mode. Raises ValueError for an ``address``
        list that is not IP:port entries."""
        base = grpc_target(address) if address else self.address
        overrides = {name: getattr(self, f"{name}_address") for name in SERVICES}
        if not base and not any(overrides.values()):
            return None
        return {name: overrides[name] or base for name in SERVICES if overrides[name] or base}
