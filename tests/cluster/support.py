"""What the cluster tests share: SDK clients of one replica or of a whole service, and call counts."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

from sessionkit.agent_client import AgentClient
from sessionkit.config import ClientSettings
from sessionkit.memory_client import MemoryClient
from sessionkit.retry import RetryPolicy
from sessionkit.state_client import SessionRef, StateClient
from sessionkit.transport import Transport
from sessionkit_server.cluster.processes import Cluster, calls_started

APP = "cluster"


def transport(target: str, deadline: float = 60.0) -> Transport:
    """Every service at ``target`` (one replica's host:port, or a service's ipv4: list): nothing from
    the environment."""
    settings = ClientSettings(
        address=target, state_address="", memory_address="", knowledge_address="", agent_address=""
    )
    return Transport(settings, target, Path("."), RetryPolicy(deadline=deadline))


def state(target: str, deadline: float = 60.0) -> StateClient:
    return StateClient(transport(target, deadline))


def memory(target: str, deadline: float = 60.0) -> MemoryClient:
    return MemoryClient(transport(target, deadline))


def agent(target: str, deadline: float = 120.0) -> AgentClient:
    return AgentClient(transport(target, deadline))


def new_ref(user: str = "alice") -> SessionRef:
    return SessionRef(APP, user, f"s-{uuid.uuid4().hex[:12]}")


def call_counts(cluster: Cluster, service: str) -> dict[str, int]:
    """Calls each replica of ``service`` has started (gRPC's channelz counters)."""
    return {r.name: calls_started(r.address) for r in cluster.topology.replicas[service]}


def free_base_port(hosts: list[str], count: int) -> int:
    """A port P such that P .. P+count-1 are free on every one of ``hosts``."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + count > 65535:
            continue
        try:
            for host in hosts:
                for port in range(base, base + count):
                    with socket.socket() as s:
                        s.bind((host, port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} consecutive free ports on {hosts}")
