"""A replica added to a service's DNS name (the headless Service's records) gets calls within seconds:
servers close connections after their maximum age, and clients resolve the name again."""

from __future__ import annotations

import asyncio
import time

import pytest

from sessionkit_server.cluster.processes import Cluster, calls_started
from tests.cluster import support
from tests.cluster.support import new_ref
from tests.dns_server import DnsServer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


async def test_a_replica_added_to_the_dns_name_receives_calls(cluster: Cluster) -> None:
    replicas = cluster.topology.replicas["state"]
    newcomer = replicas[-1]
    with DnsServer() as dns:
        name = "sessionkit-state.cluster.test"
        dns.set(name, [r.host for r in replicas[:-1]])
        client = support.state(dns.target(name, newcomer.port))
        ref = new_ref()
        await client.create_session(ref)
        for i in range(6):
            await client.set_value(ref, "n", i)
        start = calls_started(newcomer.address)
        polls = 1
        dns.set(name, [r.host for r in replicas])
        deadline = time.monotonic() + 60
        while True:
            for i in range(5):
                await client.set_value(ref, "n", i)
            polls += 1
            # Every call but this test's own channelz calls is one the client sent it.
            served = calls_started(newcomer.address) - start - polls + 1
            if served > 0:
                break
            assert time.monotonic() < deadline, f"{newcomer.name} got no call within 60 s of its record"
            await asyncio.sleep(0.2)
