"""Three replicas of each service behind one PostgreSQL database and one Chroma server: any replica
serves any session, what one writes the others read at once, the agent's per-conversation lease and
memory dedup hold across replicas, and round_robin spreads calls over every replica."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path

import httpx
import pytest

from sessionkit_server.cluster.processes import Cluster
from tests.cluster import support
from tests.cluster.support import call_counts, new_ref

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


async def test_any_replica_serves_any_session_and_every_other_reads_its_write_at_once(
    cluster: Cluster,
) -> None:
    replicas = cluster.topology.replicas["state"]
    ref = new_ref()
    await support.state(replicas[0].address).create_session(ref)
    for i, writer in enumerate(replicas):
        version = await support.state(writer.address).set_value(ref, f"from-{writer.name}", i)
        for reader in replicas:
            state, read_version = await support.state(reader.address).get_state(ref)
            assert state[f"from-{writer.name}"] == i, f"{reader.name} did not see {writer.name}'s write"
            assert read_version == version


async def test_calls_spread_over_every_replica_of_every_service(cluster: Cluster) -> None:
    topology = cluster.topology
    ref = new_ref()
    await support.state(topology.target("state")).create_session(ref)
    before = {name: call_counts(cluster, name) for name in ("state", "memory", "agent")}
    # Clients given the service's address list (round_robin over it)...
    for i in range(12):
        await support.state(topology.target("state")).set_value(ref, "n", i)
        await support.memory(topology.target("memory")).list_all(ref)
        await support.agent(topology.target("agent")).list_agents(ref)
    # ...and the gateway, whose upstream is that list too.
    gateway = f"http://{topology.gateway.address}"
    async with httpx.AsyncClient(timeout=30) as http:
        for _ in range(12):
            reply = await http.get(
                f"{gateway}/v1/sessions/{ref.session_id}/state",
                params={"user_id": ref.user_id},
                headers={"x-app-name": ref.app_name},
            )
            assert reply.status_code in (200, 404), reply.text
    for name, counts in before.items():
        after = call_counts(cluster, name)
        # Each snapshot's own channelz call counts once: more than that is a call this test made.
        served = {replica: after[replica] - counts[replica] - 1 for replica in counts}
        assert all(n > 0 for n in served.values()), f"{name}: calls per replica {served}"


async def test_memory_dedup_holds_across_replicas(cluster: Cluster) -> None:
    replicas = cluster.topology.replicas["memory"]
    ref = new_ref()
    await support.state(cluster.topology.target("state")).create_session(ref)
    text = "Alice drinks green tea every morning"
    results = await asyncio.gather(
        *(support.memory(r.address).add(ref, text) for r in replicas for _ in range(2))
    )
    assert len({r["id"] for r in results}) == 1, "the same memory was stored more than once"
    # One add stored it; every other found it (by its content hash, or by its vector if it came
    # while the first was being written: merged into it, the same text).
    assert sum(not (r["deduplicated"] or r["merged"]) for r in results) == 1
    listed = await support.memory(replicas[-1].address).list_all(ref)
    assert [m["text"] for m in listed] == [text]


async def test_turns_of_one_session_serialize_across_agent_replicas(cluster: Cluster) -> None:
    topology = cluster.topology
    replicas = topology.replicas["agent"]
    ref = new_ref()
    await support.state(topology.target("state")).create_session(ref)
    await support.agent(replicas[0].address).create_agent(
        ref, {"name": "Echo", "instructions": "Repeat the message."}
    )
    messages = [f"message {i}" for i in range(6)]
    replies = await asyncio.gather(
        *(
            support.agent(replicas[i % len(replicas)].address).chat(ref, "Echo", message)
            for i, message in enumerate(messages)
        )
    )
    assert [r["text"] for r in replies] == [f"echo: {m}" for m in messages]
    events, _ = await support.state(topology.target("state")).list_events(ref, page_size=100)
    turns = [(e.role, e.content) for e in events if e.role in ("user", "assistant", "model")]
    assert len(turns) == 2 * len(messages), turns
    # One turn at a time: each user message is followed by its own answer, never by another turn's.
    for (role, asked), (reply_role, answered) in zip(turns[::2], turns[1::2], strict=True):
        assert role == "user" and reply_role != "user", turns
        assert answered == f"echo: {asked}", turns
    assert sorted(asked for _, asked in turns[::2]) == sorted(messages)


def test_replicas_starting_together_migrated_the_empty_database_once(cluster: Cluster) -> None:
    """Every replica started at once on an empty database (the fixture ran no migration first): each
    revision was applied by exactly one of them."""
    applied: Counter[str] = Counter()
    for replica in cluster.topology.all_replicas():
        log = Path(cluster.running[replica.name].log).read_text(errors="replace")
        applied.update(re.findall(r"Running upgrade [^\n\"]*?-> (\w+)", log))
    assert applied, "no replica logged a migration"
    assert {rev: n for rev, n in applied.items() if n != 1} == {}, applied
