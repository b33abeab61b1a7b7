"""Client channels balance over every replica: a dns:/// name resolving to several servers (a DNS server
on loopback standing in for a headless Service) and an IP list; after the servers' maximum connection
age, a client finds a replica added to the name's records since it connected."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sessionkit import Session
from sessionkit_server.common.config import ServerSettings
from tests.conftest import _truncate, free_port
from tests.dns_server import DnsServer
from tests.scaleout.support import CallCounter
from tests.servers import ServerThread

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


class Replicas:
    """State servers on 127.0.0.2-4, one port, one PostgreSQL database, each counting its calls."""

    def __init__(self, database_url: str, tmp_path: Path, **settings: float) -> None:
        self.port = free_port()
        self.counters = {ip: CallCounter() for ip in IPS}
        self.servers: list[ServerThread] = []
        for ip in IPS:
            config = ServerSettings(
                host=ip, port=self.port, services=["state"], database_url=database_url,
                data_dir=tmp_path / ip, http_port=0, log_format="text", **settings,
            )  # fmt: skip
            self.servers.append(ServerThread(config, interceptors=[self.counters[ip]]).start())

    def calls(self) -> dict[str, int]:
        return {ip: counter.total("StateService") for ip, counter in self.counters.items()}

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def replicas(pg_database: str, tmp_path: Path) -> Iterator[Replicas]:
    # A short connection age, so the scale-up test sees the client reconnect within seconds.
    started = Replicas(
        pg_database, tmp_path, max_connection_age_seconds=1, max_connection_age_grace_seconds=5
    )
    yield started
    started.stop()
    asyncio.run(_truncate(pg_database))


def _until(condition: Callable[[], bool], step: Callable[[], None], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        step()


def test_a_dns_name_spreads_calls_over_every_replica(replicas: Replicas) -> None:
    with DnsServer() as dns:
        dns.set("state.test", list(IPS))
        with Session("spread-dns", "u", address=dns.target("state.test", replicas.port)) as session:
            for i in range(30):
                session.set_state(f"k{i}", i)
    calls = replicas.calls()
    assert all(n > 0 for n in calls.values()), calls


def test_an_address_list_spreads_calls_over_every_replica(replicas: Replicas) -> None:
    address = ",".join(f"{ip}:{replicas.port}" for ip in IPS)
    with Session("spread-list", "u", address=address) as session:
        for i in range(30):
            session.set_state(f"k{i}", i)
        assert Session("spread-list", "u", address=address).get_state("k29") == 29
    calls = replicas.calls()
    assert all(n > 0 for n in calls.values()), calls


def test_a_replica_added_to_the_name_gets_calls_after_the_connection_age(replicas: Replicas) -> None:
    with DnsServer() as dns:
        dns.set("state.test", [IPS[0]])
        with Session("scale-up", "u", address=dns.target("state.test", replicas.port)) as session:

            def write() -> None:
                session.increment_state("n")
                time.sleep(0.05)

            for _ in range(5):
                write()
            assert replicas.calls()[IPS[1]] == 0
            dns.set("state.test", list(IPS[:2]))
            _until(lambda: replicas.calls()[IPS[1]] > 0, write)
