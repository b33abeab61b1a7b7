"""The agent store's contract (sessionkit_server.agent.store.AgentStore) on SQLite and PostgreSQL:
agent definitions per session (and per incarnation of a session id), paging in name order, deletes,
conversation leases (one holder at a time, even when many ask at once), and per-session idempotency
claims."""

from __future__ import annotations

import asyncio
import time

import pytest

from sessionkit_server.agent.store import AgentStore, Conversation
from sessionkit_server.common.db import Database

S1 = Conversation("app", "alice", "s1")
S2 = Conversation("app", "alice", "s2")
BOB = Conversation("app", "bob", "s1")
OTHER_APP = Conversation("other", "alice", "s1")
BORN = 1_000  # the session's create time
TTL = 30 * 1_000_000


def now_us() -> int:
    return time.time_ns() // 1000


@pytest.fixture
async def store(database: Database) -> AgentStore:
    store = AgentStore(database)
    await store.start()
    return store


async def put(
    store: AgentStore, conv: Conversation, name: str, definition: bytes, mode: str = "fail"
) -> bool:
    _, created = await store.put_agent(conv, name, definition, BORN, mode, now_us())
    return created


# -- definitions --------------------------------------------------------------------------------------


async def test_an_agent_belongs_to_its_session(store: AgentStore) -> None:
    assert await put(store, S1, "helper", b"def-1")
    for other in (S2, BOB, OTHER_APP):
        assert await store.get_agent(other, "helper", BORN) is None
        assert await store.list_agents(other, BORN, "", 10) == []
        assert await store.delete_agent(other, "helper", BORN) is False
    got = await store.get_agent(S1, "helper", BORN)
    assert got is not None and got.definition == b"def-1"


async def test_put_modes_fail_get_and_replace(store: AgentStore) -> None:
    t = now_us()
    row, created = await store.put_agent(S1, "helper", b"one", BORN, "fail", t)
    assert created and (row.create_us, row.update_us) == (t, t)
    existing, created = await store.put_agent(S1, "helper", b"two", BORN, "fail", t + 1)
    assert not created and existing.definition == b"one"
    existing, created = await store.put_agent(S1, "helper", b"two", BORN, "get", t + 1)
    assert not created and existing.definition == b"one"
    replaced, created = await store.put_agent(S1, "helper", b"two", BORN, "replace", t + 2)
    assert not created and (replaced.definition, replaced.create_us, replaced.update_us) == (b"two", t, t + 2)
    got = await store.get_agent(S1, "helper", BORN)
    assert got is not None and (got.definition, got.create_us, got.update_us) == (b"two", t, t + 2)


async def test_a_session_created_again_under_the_same_id_does_not_inherit_agents(store: AgentStore) -> None:
    await put(store, S1, "helper", b"old")
    assert await store.get_agent(S1, "helper", BORN + 1) is None
    assert await store.list_agents(S1, BORN + 1, "", 10) == []
    assert await store.delete_agent(S1, "helper", BORN + 1) is False
    _, created = await store.put_agent(S1, "helper", b"new", BORN + 1, "fail", now_us())
    assert created  # the old incarnation's row is replaced
    got = await store.get_agent(S1, "helper", BORN + 1)
    assert got is not None and got.definition == b"new"
    assert await store.get_agent(S1, "helper", BORN) is None


async def test_agents_page_in_name_order(store: AgentStore) -> None:
    for name in ("delta", "alpha", "écho", "charlie", "bravo", "日本"):
        await put(store, S1, name, name.encode())
    seen: list[str] = []
    after = ""
    while page := await store.list_agents(S1, BORN, after, 2):
        assert len(page) <= 2
        seen += [row.name for row in page]
        after = page[-1].name
    assert seen[:4] == ["alpha", "bravo", "charlie", "delta"]
    assert sorted(seen[4:]) == [
        "écho",
        "日本",
    ]  # non-ASCII after ASCII on both (collations differ among them)


async def test_delete_agent(store: AgentStore) -> None:
    await put(store, S1, "helper", b"x")
    assert await store.delete_agent(S1, "helper", BORN) is True
    assert await store.delete_agent(S1, "helper", BORN) is False
    assert await store.get_agent(S1, "helper", BORN) is None


async def test_definitions_are_bytes_kept_exactly(store: AgentStore) -> None:
    definition = bytes(range(256)) + b"\x00\x00" + "🙂".encode()
    await put(store, S1, "bin", definition)
    got = await store.get_agent(S1, "bin", BORN)
    assert got is not None and got.definition == definition


# -- conversation leases ------------------------------------------------------------------------------


async def test_a_lease_has_one_holder_until_released_or_expired(store: AgentStore) -> None:
    t = now_us()
    assert await store.try_lease(S1, "turn-a", t, TTL)
    assert not await store.try_lease(S1, "turn-b", t + 1, TTL)
    assert await store.try_lease(S2, "turn-b", t + 1, TTL)  # another session: its own lease
    assert await store.try_lease(BOB, "turn-b", t + 1, TTL)
    assert await store.renew_lease(S1, "turn-a", t + 2, TTL)
    assert not await store.renew_lease(S1, "turn-b", t + 2, TTL)
    assert not await store.try_lease(S1, "turn-b", t + TTL + 1, TTL)  # renewed: still live
    await store.release_lease(S1, "turn-b")  # not the holder: nothing happens
    assert not await store.try_lease(S1, "turn-b", t + 3, TTL)
    await store.release_lease(S1, "turn-a")
    assert await store.try_lease(S1, "turn-b", t + 4, TTL)
    assert await store.try_lease(S1, "turn-c", t + 4 + TTL + 1, TTL)  # turn-b's lease expired
    assert not await store.renew_lease(S1, "turn-b", t + 4 + TTL + 2, TTL)


async def test_concurrent_lease_requests_exactly_one_wins(store: AgentStore) -> None:
    t = now_us()
    results = await asyncio.gather(*(store.try_lease(S1, f"turn-{n}", t, TTL) for n in range(8)))
    assert results.count(True) == 1, results
    expired = t + TTL + 1
    results = await asyncio.gather(*(store.try_lease(S1, f"late-{n}", expired, TTL) for n in range(8)))
    assert results.count(True) == 1, results


# -- idempotency claims (per session) -----------------------------------------------------------------


async def test_a_claim_is_per_session_and_completes_or_is_abandoned(store: AgentStore) -> None:
    t = now_us()
    assert (await store.claim(S1, "k1", "Chat", t)).claimed
    running = await store.claim(S1, "k1", "Chat", t + 1)
    assert (running.claimed, running.response) == (False, None)
    assert (await store.claim(S2, "k1", "Chat", t)).claimed  # another session's key
    await store.complete(S1, "k1", b"answer")
    done = await store.claim(S1, "k1", "Chat", t + 2)
    assert (done.claimed, done.response) == (False, b"answer")
    await store.abandon(S2, "k1")
    assert (await store.claim(S2, "k1", "Chat", t + 3)).claimed  # abandoned: runs again


async def test_concurrent_claims_of_one_key_exactly_one_wins(store: AgentStore) -> None:
    claims = await asyncio.gather(*(store.claim(S1, "k1", "Chat", now_us()) for _ in range(8)))
    assert [c.claimed for c in claims].count(True) == 1, claims


async def test_claim_and_lease_commit_together_and_release_completes_the_key(store: AgentStore) -> None:
    """A turn's key and lease: taken in one transaction, completed (or dropped) with the release."""
    t = now_us()
    claim, leased = await store.claim_and_lease(S1, "k1", "Chat", "turn-a", t, TTL)
    assert claim.claimed and leased
    # Another key while the conversation is busy: the key is claimed, the lease is not taken.
    claim, leased = await store.claim_and_lease(S1, "k2", "Chat", "turn-b", t + 1, TTL)
    assert claim.claimed and not leased
    # A repeat of a running key takes neither.
    claim, leased = await store.claim_and_lease(S1, "k1", "Chat", "turn-c", t + 2, TTL)
    assert (claim.claimed, claim.response, leased) == (False, None, False)
    await store.release_lease(S1, "turn-a", "k1", b"answer")
    assert await store.try_lease(S1, "turn-b", t + 3, TTL)  # released ...
    done = await store.claim(S1, "k1", "Chat", t + 4)
    assert (done.claimed, done.response) == (False, b"answer")  # ... and completed, at once
    # A failed call (no response) drops its claim with the lease: a retry runs it again.
    await store.release_lease(S1, "turn-b", "k2")
    claim, leased = await store.claim_and_lease(S1, "k2", "Chat", "turn-d", t + 5, TTL)
    assert claim.claimed and leased
    replay, leased = await store.claim_and_lease(S1, "k1", "Chat", "turn-e", t + 6, TTL)
    assert (replay.response, leased) == (b"answer", False)
