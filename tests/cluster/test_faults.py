"""Faults under load: while several clients keep writing (state increments and saves with idempotency
keys, memory adds), one replica of each service is killed (-9) and restarted, the Chroma server is
restarted, and PostgreSQL is restarted. A ledger of what was acknowledged shows nothing lost and
nothing applied twice. And readiness follows the dependencies: NOT_SERVING while one is down."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sessionkit.errors import SessionKitError
from sessionkit_server.cluster.processes import Cluster
from sessionkit_server.cluster.topology import CHROMA, SERVICES
from tests import pg_server
from tests.cluster import support
from tests.cluster.support import new_ref

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
T = TypeVar("T")
CLIENTS = 4


async def acknowledged(call: Callable[[], Awaitable[T]], within: float = 300.0) -> T:
    """Repeat ``call`` (it carries one idempotency key) until it is acknowledged: a write whose answer
    was lost may have been applied, and only its repeat with the same key tells which."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await call()
        except SessionKitError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


@dataclass
class Ledger:
    increments: int = 0
    saved: dict[str, int] = field(default_factory=dict)
    memories: dict[str, str] = field(default_factory=dict)  # text -> id
    sessions: dict[int, support.SessionRef] = field(default_factory=dict)  # each client's own


async def _client(
    index: int, cluster: Cluster, shared: support.SessionRef, ledger: Ledger, stop: asyncio.Event
) -> None:
    topology = cluster.topology
    state = support.state(topology.target("state"), deadline=60)
    memory = support.memory(topology.target("memory"), deadline=60)
    own = ledger.sessions[index] = new_ref(f"client-{index}")
    await acknowledged(lambda: state.create_session(own))
    n = 0
    while not stop.is_set():
        key = uuid.uuid4().hex
        await acknowledged(lambda k=key: state.increment(shared, "counter", 1, idempotency_key=k))
        ledger.increments += 1
        key = uuid.uuid4().hex
        await acknowledged(
            lambda k=key, v=n: state.set_value(shared, f"client-{index}", v, idempotency_key=k)
        )
        ledger.saved[f"client-{index}"] = n
        if n % 2 == 0:
            text = f"client {index} remembers fact {n}: {uuid.uuid4().hex}"
            key = uuid.uuid4().hex
            added = await acknowledged(lambda k=key, t=text: memory.add(own, t, idempotency_key=k))
            ledger.memories[text] = added["id"]
        n += 1


def _restart(cluster: Cluster, name: str, sig: int) -> None:
    replica = cluster.replica(name)
    cluster.kill(name, sig)
    cluster.start(replica)
    cluster.wait_serving([replica], timeout=420)


async def test_nothing_acknowledged_is_lost_or_applied_twice_through_faults(
    cluster: Cluster, cluster_pg: pg_server.ThrowawayServer
) -> None:
    topology = cluster.topology
    shared = new_ref("shared")
    await support.state(topology.target("state")).create_session(shared)
    ledger = Ledger()
    stop = asyncio.Event()
    clients = [asyncio.create_task(_client(i, cluster, shared, ledger, stop)) for i in range(CLIENTS)]

    async def progress(minimum: int = 5) -> None:
        """Until the load has made ``minimum`` more increments (it goes on between faults)."""
        target = ledger.increments + minimum
        deadline = time.monotonic() + 300
        while ledger.increments < target:
            for task in clients:
                if task.done():
                    task.result()  # a client that failed: its error
            assert time.monotonic() < deadline, "the load made no progress"
            await asyncio.sleep(0.2)

    try:
        await progress()
        for service in SERVICES:
            await asyncio.to_thread(_restart, cluster, f"{service}-0", signal.SIGKILL)
            await progress()
        await asyncio.to_thread(_restart, cluster, CHROMA, signal.SIGTERM)
        await progress()
        await asyncio.to_thread(cluster_pg.stop)
        await asyncio.sleep(2)
        await asyncio.to_thread(cluster_pg.start)
        await progress()
    finally:
        stop.set()
        await asyncio.gather(*clients)

    state, _ = await support.state(topology.target("state")).get_state(shared)
    assert state["counter"] == ledger.increments, "increments lost or applied twice"
    assert {k: state[k] for k in ledger.saved} == ledger.saved
    memory = support.memory(topology.target("memory"))
    for index in range(CLIENTS):
        texts = [m["text"] for m in await memory.list_all(ledger.sessions[index])]
        mine = [t for t in ledger.memories if t.startswith(f"client {index} ")]
        assert sorted(texts) == sorted(mine), f"client {index}: memories lost or stored twice"


def _health(address: str, service: str) -> str:
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=3
            )
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    except grpc.RpcError as error:
        return f"UNREACHABLE ({error.code().name})"


def _until(replicas: list[str], service: str, wanted: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        seen = {address: _health(address, service) for address in replicas}
        if all(status == wanted for status in seen.values()):
            return
        assert time.monotonic() < deadline, f"{service} not {wanted} within {timeout} s: {seen}"
        time.sleep(0.25)


def test_readiness_goes_not_serving_while_a_dependency_is_down(
    cluster: Cluster, cluster_pg: pg_server.ThrowawayServer
) -> None:
    topology = cluster.topology
    memory = [r.address for r in topology.replicas["memory"]]
    everything = [r.address for r in topology.all_replicas()]
    chroma = cluster.replica(CHROMA)
    cluster.kill(CHROMA, signal.SIGTERM)
    try:
        _until(memory, "sessionkit.v1.MemoryService", "NOT_SERVING")
    finally:
        cluster.start(chroma)
        cluster.wait_serving([chroma], timeout=120)
    _until(memory, "sessionkit.v1.MemoryService", "SERVING")
    cluster_pg.stop()
    try:
        _until([r.address for r in topology.replicas["state"]], "sessionkit.v1.StateService", "NOT_SERVING")
    finally:
        cluster_pg.start()
    _until(everything, "", "SERVING")
