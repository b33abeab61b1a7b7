"""What runs where: the replicas of each gRPC service, the gateway and the Chroma server, their addresses,
and each process's environment: the one deploy/k8s/base gives its container, with only the addresses
(and the secrets, which come from the command's options) rewritten for this machine.

``MANIFEST_ENV`` mirrors the manifests; tests/cluster/test_topology.py renders deploy/k8s/base and fails
when a Deployment's variables and this table differ, so a variable added to a manifest is added here.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

#: The replicated gRPC services, in start order (any order works: each waits for its dependencies).
SERVICES = ("state", "memory", "knowledge", "agent")
GATEWAY = "gateway"
CHROMA = "chroma"
#: With --netns: a TCP relay from the bridge to an endpoint only this machine's loopback reaches.
RELAY = "relay"
#: Port of each service on its replicas' addresses (replica i of every service shares host i).
SERVICE_PORT_OFFSET = {name: i for i, name in enumerate(SERVICES)}


@dataclass(frozen=True)
class Secret:
    """A variable the manifests take from the Secret; here it comes from an option of the command."""

    key: str


#: The ConfigMap deploy/k8s/base/sessionkit.env (every container takes all of it through envFrom).
CONFIG_MAP: dict[str, str] = {
    "SESSIONKIT_VECTOR_URL": "http://sessionkit-chroma:8000",
    "SESSIONKIT_DRAIN_SECONDS": "300",
    "SESSIONKIT_MAX_CONNECTION_AGE_SECONDS": "60",
    "SESSIONKIT_EMBEDDING_THREADS": "2",
    "SESSIONKIT_AGENT_OFFLINE_THREADS": "2",
    "SESSIONKIT_LLM_BASE_URL": "",
    "SESSIONKIT_LLM_MODEL": "gpt-4o-mini",
    "SESSIONKIT_LOG_LEVEL": "INFO",
    "SESSIONKIT_LOG_FORMAT": "json",
}

_API_KEYS_FILE = "/etc/sessionkit/secrets/api-keys.json"
_DATABASE = Secret("database-url")
_LLM_KEY = Secret("llm-api-key")


def _grpc_env(service: str) -> dict[str, str | Secret]:
    return {
        "SESSIONKIT_SERVICES": f'["{service}"]',
        "SESSIONKIT_HOST": "0.0.0.0",
        "SESSIONKIT_PORT": "50051",
        "SESSIONKIT_HTTP_PORT": "0",
    }


_UPSTREAMS = {
    f"SESSIONKIT_{name.upper()}_ADDRESS": f"dns:///sessionkit-{name}:50051"
    for name in ("state", "memory", "knowledge")
}

#: Each Deployment's own container variables (on top of the ConfigMap), in the manifests' order.
CONTAINER_ENV: dict[str, dict[str, str | Secret]] = {
    "state": {
        **_grpc_env("state"),
        "SESSIONKIT_API_KEYS_FILE": _API_KEYS_FILE,
        "SESSIONKIT_DATABASE_URL": _DATABASE,
    },
    "memory": {
        **_grpc_env("memory"),
        "SESSIONKIT_API_KEYS_FILE": _API_KEYS_FILE,
        "SESSIONKIT_DATABASE_URL": _DATABASE,
        "SESSIONKIT_LLM_API_KEY": _LLM_KEY,
    },
    "knowledge": {
        **_grpc_env("knowledge"),
        "SESSIONKIT_API_KEYS_FILE": _API_KEYS_FILE,
        "SESSIONKIT_DATABASE_URL": _DATABASE,
    },
    "agent": {
        **_grpc_env("agent"),
        **_UPSTREAMS,
        "SESSIONKIT_API_KEYS_FILE": _API_KEYS_FILE,
        "SESSIONKIT_DATABASE_URL": _DATABASE,
        "SESSIONKIT_LLM_API_KEY": _LLM_KEY,
    },
    "gateway": {
        "SESSIONKIT_HTTP_HOST": "0.0.0.0",
        "SESSIONKIT_HTTP_PORT": "8080",
        **_UPSTREAMS,
        "SESSIONKIT_AGENT_ADDRESS": "dns:///sessionkit-agent:50051",
        "SESSIONKIT_API_KEYS_FILE": _API_KEYS_FILE,
    },
}

#: Each container's command after ``sessionkit`` (the image's entry point).
ARGS: dict[str, tuple[str, ...]] = {
    **{name: ("serve",) for name in SERVICES},
    GATEWAY: ("serve", "--service", "gateway"),
}


def manifest_env(component: str) -> dict[str, str | Secret]:
    """Every variable the manifests give ``component``'s container, as written there."""
    return {**CONFIG_MAP, **CONTAINER_ENV[component]}


@dataclass(frozen=True)
class Replica:
    """One process: a replica of a gRPC service, the gateway, or the Chroma server."""

    component: str
    index: int
    host: str
    port: int
    #: The network namespace it runs in (None: this machine's own).
    netns: str | None = None

    @property
    def name(self) -> str:
        return self.component if self.component in (GATEWAY, CHROMA) else f"{self.component}-{self.index}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class NetnsPlan:
    """The ``--netns`` layout: a bridge on this machine holding the subnet's first address, and one
    namespace per service joined to it by a veth pair; the service's replicas have addresses there."""

    subnet: str
    bridge: str
    bridge_address: str
    namespaces: dict[str, str]


@dataclass
class Topology:
    replicas: dict[str, list[Replica]]
    gateway: Replica
    #: The Chroma server the launcher starts (None when --vector-url names one).
    chroma: Replica | None
    vector_url: str
    database_url: str
    run_dir: Path
    secrets: dict[str, str] = field(default_factory=dict)
    #: Settings beyond the manifests' (tests: a short health interval, the test LLM's URL), by component.
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)
    netns: NetnsPlan | None = None
    #: The relays (--netns) and the loopback host:port each forwards to.
    relays: dict[Replica, str] = field(default_factory=dict)
    llm_base_url: str = ""

    def all_replicas(self) -> list[Replica]:
        return [r for name in SERVICES for r in self.replicas[name]]

    def processes(self) -> list[Replica]:
        """Every process the launcher starts, in start order."""
        head = [*self.relays, *([self.chroma] if self.chroma is not None else [])]
        return [*head, *self.all_replicas(), self.gateway]

    def target(self, service: str) -> str:
        """The gRPC target of every replica of ``service`` (gRPC's own address-list syntax)."""
        return "ipv4:" + ",".join(r.address for r in self.replicas[service])

    @property
    def api_keys_file(self) -> Path:
        """The mounted Secret's api-keys.json, here a file in the run directory."""
        return self.run_dir / "api-keys.json"

    def replica_dir(self, replica: Replica) -> Path:
        return self.run_dir / replica.name

    def environment(self, replica: Replica) -> dict[str, str]:
        """The variables the manifests set for ``replica``'s container, rewritten for this machine:
        Service names become this topology's address lists, listen addresses the replica's own, the
        Chroma URL this Chroma server's, paths the run directory's, and secrets the options' values."""
        env: dict[str, str] = {}
        for name, value in manifest_env(replica.component).items():
            if isinstance(value, Secret):
                env[name] = self.secrets.get(value.key, "")
                continue
            env[name] = _SERVICE_NAME.sub(lambda m: self.target(m.group(1)), value)
        rewrites = {
            "SESSIONKIT_HOST": replica.host,
            "SESSIONKIT_PORT": str(replica.port),
            "SESSIONKIT_HTTP_HOST": self.gateway.host,
            "SESSIONKIT_VECTOR_URL": self.vector_url,
            "SESSIONKIT_API_KEYS_FILE": str(self.api_keys_file),
            **({"SESSIONKIT_LLM_BASE_URL": self.llm_base_url} if self.llm_base_url else {}),
        }
        if replica.component == GATEWAY:
            rewrites["SESSIONKIT_HTTP_PORT"] = str(self.gateway.port)
        env.update({k: v for k, v in rewrites.items() if k in env})
        env.update(self.extra_env.get(replica.component, {}))
        return env


_SERVICE_NAME = re.compile(r"dns:///sessionkit-(state|memory|knowledge|agent):\d+")


def plan(
    *,
    run_dir: Path,
    database_url: str,
    replicas: int = 3,
    base_port: int = 50051,
    http_host: str = "127.0.0.1",
    http_port: int = 8080,
    vector_url: str = "",
    chroma_port: int = 8000,
    secrets: dict[str, str] | None = None,
    extra_env: dict[str, dict[str, str]] | None = None,
    netns_subnet: str | None = None,
    llm_base_url: str = "",
) -> Topology:
    """The topology: replica i of every service on 127.0.0.(i+2), each service on its own port from
    ``base_port`` (state, memory, knowledge, agent); with ``netns_subnet``, each service in its own
    namespace on that subnet instead, every replica on its own address there (and a relay from the
    bridge to the database, and the LLM, when only this machine's loopback reaches them)."""
    if not 1 <= replicas <= 50:
        raise ValueError(f"replicas: {replicas} is not between 1 and 50")
    if not 1 <= base_port <= 65535 - len(SERVICES):
        raise ValueError(f"base port: {base_port} leaves no room for {len(SERVICES)} ports below 65536")
    net: NetnsPlan | None = None
    chroma_host = "127.0.0.1"
    hosts: dict[str, list[str]] = {name: [f"127.0.0.{i + 2}" for i in range(replicas)] for name in SERVICES}
    if netns_subnet is not None:
        net, hosts = _netns_layout(netns_subnet, replicas)
        chroma_host = net.bridge_address
    topo_replicas = {
        name: [
            Replica(
                name,
                i,
                host,
                base_port + SERVICE_PORT_OFFSET[name],
                net.namespaces[name] if net is not None else None,
            )
            for i, host in enumerate(hosts[name])
        ]
        for name in SERVICES
    }
    chroma = None if vector_url else Replica(CHROMA, 0, chroma_host, chroma_port)
    relays: dict[Replica, str] = {}
    service_db_url = database_url
    if net is not None:
        service_db_url = _relayed(database_url, net, relays, 5432)
        llm_base_url = _relayed(llm_base_url, net, relays, 80) if llm_base_url else ""
    return Topology(
        replicas=topo_replicas,
        gateway=Replica(GATEWAY, 0, http_host, http_port),
        chroma=chroma,
        vector_url=vector_url or f"http://{chroma_host}:{chroma_port}",
        database_url=database_url,
        run_dir=run_dir,
        secrets={**(secrets or {}), "database-url": service_db_url},
        extra_env={name: dict(values) for name, values in (extra_env or {}).items()},
        netns=net,
        relays=relays,
        llm_base_url=llm_base_url,
    )


def _relayed(url: str, net: NetnsPlan, relays: dict[Replica, str], default_port: int) -> str:
    """``url`` as the namespaces reach it: unchanged unless its host is loopback, else through a new
    relay on the bridge's address."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host not in ("localhost", "::1") and not host.startswith("127."):
        return url
    port = parts.port or default_port
    relay = Replica(RELAY, len(relays), net.bridge_address, port)
    relays[relay] = f"{host}:{port}"
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = f"{netloc[0]}@" if len(netloc) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{userinfo}{net.bridge_address}:{port}"))


def _netns_layout(subnet: str, replicas: int) -> tuple[NetnsPlan, dict[str, list[str]]]:
    try:
        network = ipaddress.IPv4Network(subnet)
    except ValueError as error:
        raise ValueError(f"netns subnet {subnet!r}: {error}") from None
    needed = 1 + len(SERVICES) * replicas
    addresses = list(network.hosts())
    if len(addresses) < needed:
        raise ValueError(f"netns subnet {subnet}: {needed} addresses needed, it has {len(addresses)}")
    hosts = {
        name: [str(addresses[1 + k * replicas + i]) for i in range(replicas)]
        for k, name in enumerate(SERVICES)
    }
    plan_ = NetnsPlan(
        subnet=str(network),
        bridge="sk-br0",
        bridge_address=str(addresses[0]),
        namespaces={name: f"sk-{name}" for name in SERVICES},
    )
    return plan_, hosts
