"""The idempotency ledger's contract (sessionkit_server.common.idempotency.IdempotencyLedger), on every
service's migrated table (memory, knowledge, agent, state), on both backends: claim, complete, replay, a key
reused by another method, expiry, abandoned claims, key spaces, and concurrent users of one key (exactly
one wins). Each write's effect is a row of a scratch table, so "wrote nothing" is checked in the
database, not in Python."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, func, insert, select

from sessionkit.errors import FailedPrecondition, InvalidArgument, ServiceUnavailable
from sessionkit_server.agent import tables as agent_tables
from sessionkit_server.common.db import Database
from sessionkit_server.common.idempotency import (
    IDEMPOTENCY_TTL_US,
    Idempotency,
    IdempotencyLedger,
    KeySpace,
    Replayed,
    Status,
    check_key,
)
from sessionkit_server.knowledge import tables as knowledge_tables
from sessionkit_server.memory import tables as memory_tables
from sessionkit_server.state import tables as state_tables

TABLES = {
    "memory": memory_tables.idempotency,
    "knowledge": knowledge_tables.idempotency,
    "agent": agent_tables.idempotency,
    "state": state_tables.idempotency,
}
SPACE = KeySpace("app", "alice")
LEASE_US = 60 * 1_000_000

scratch = MetaData()
effects = Table(
    "sk_contract_effects",
    scratch,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("note", String(64), nullable=False),
)


def now_us() -> int:
    return time.time_ns() // 1000


@pytest.fixture(params=list(TABLES))
async def ledger(request: pytest.FixtureRequest, database: Database) -> IdempotencyLedger:
    await database.write(lambda conn: scratch.create_all(conn, checkfirst=True))
    return IdempotencyLedger(database, TABLES[request.param], claim_lease_us=LEASE_US)


def idem(key: str, method: str = "AddThing") -> Idempotency[str]:
    return Idempotency(key, method, lambda result: f"response:{result}".encode())


def effect(note: str):  # type: ignore[no-untyped-def]
    def run(conn: Connection) -> str:
        conn.execute(insert(effects).values(note=note))
        return note

    return run


async def effect_notes(db: Database) -> list[str]:
    return list(
        await db.read(lambda conn: conn.execute(select(effects.c.note).order_by(effects.c.id)).scalars())
    )


async def rows(ledger: IdempotencyLedger) -> int:
    return int(
        await ledger.db.read(
            lambda conn: conn.execute(select(func.count()).select_from(ledger.table)).scalar_one()
        )
    )


# -- one-transaction writes -------------------------------------------------------------------------


async def test_a_write_with_a_key_applies_once_and_its_repeat_replays_the_first_response(
    ledger: IdempotencyLedger,
) -> None:
    t = now_us()
    assert await ledger.write(SPACE, idem("k1"), t, effect("first")) == "first"
    with pytest.raises(Replayed) as replay:
        await ledger.write(SPACE, idem("k1"), t + 1, effect("second"))
    assert replay.value.response == b"response:first"
    assert await effect_notes(ledger.db) == ["first"]  # the repeat wrote nothing
    with pytest.raises(Replayed) as fast:
        await ledger.replay(SPACE, "k1", "AddThing", t + 2)
    assert fast.value.response == b"response:first"


async def test_a_write_without_a_key_always_applies(ledger: IdempotencyLedger) -> None:
    await ledger.write(SPACE, None, now_us(), effect("a"))
    await ledger.write(SPACE, None, now_us(), effect("a"))
    assert await effect_notes(ledger.db) == ["a", "a"]
    assert await rows(ledger) == 0


async def test_replay_of_an_unused_key_returns(ledger: IdempotencyLedger) -> None:
    await ledger.replay(SPACE, "never-used", "AddThing", now_us())


async def test_a_failed_write_records_no_key_and_its_retry_applies(ledger: IdempotencyLedger) -> None:
    def failing(conn: Connection) -> str:
        conn.execute(insert(effects).values(note="lost"))
        raise RuntimeError("the write failed after its first statement")

    with pytest.raises(RuntimeError):
        await ledger.write(SPACE, idem("k1"), now_us(), failing)
    assert await rows(ledger) == 0
    assert await effect_notes(ledger.db) == []
    assert await ledger.write(SPACE, idem("k1"), now_us(), effect("retry")) == "retry"
    assert await effect_notes(ledger.db) == ["retry"]


async def test_a_response_that_cannot_be_encoded_rolls_the_write_back(ledger: IdempotencyLedger) -> None:
    def explode(result: str) -> bytes:
        raise ValueError("unencodable")

    with pytest.raises(ValueError):
        await ledger.write(SPACE, Idempotency("k1", "AddThing", explode), now_us(), effect("x"))
    assert await effect_notes(ledger.db) == []
    assert await rows(ledger) == 0


async def test_remember_stores_a_response_for_a_write_that_changed_nothing(ledger: IdempotencyLedger) -> None:
    await ledger.remember(SPACE, idem("k1"), "nothing", now_us())
    with pytest.raises(Replayed) as replay:
        await ledger.write(SPACE, idem("k1"), now_us(), effect("later"))
    assert replay.value.response == b"response:nothing"
    assert await effect_notes(ledger.db) == []


# -- a key reused for another method ------------------------------------------------------------------


async def test_a_key_reused_by_another_method_is_refused_everywhere(ledger: IdempotencyLedger) -> None:
    t = now_us()
    await ledger.write(SPACE, idem("k1", "AddThing"), t, effect("first"))
    attempts = [
        ledger.write(SPACE, idem("k1", "DeleteThing"), t, effect("other")),
        ledger.replay(SPACE, "k1", "DeleteThing", t),
        ledger.claim(SPACE, "k1", "DeleteThing", t),
        ledger.try_claim(SPACE, "k1", "DeleteThing", t),
    ]
    for attempt in attempts:
        with pytest.raises(FailedPrecondition) as info:
            await attempt
        assert info.value.reason == "IDEMPOTENCY_KEY_REUSED"
        assert info.value.metadata == {"idempotency_key": "k1", "method": "AddThing"}
    assert await effect_notes(ledger.db) == ["first"]


async def test_a_running_claim_is_reserved_for_its_method_too(ledger: IdempotencyLedger) -> None:
    await ledger.claim(SPACE, "k1", "Extract", now_us())
    with pytest.raises(FailedPrecondition) as info:
        await ledger.write(SPACE, idem("k1", "AddThing"), now_us(), effect("x"))
    assert info.value.reason == "IDEMPOTENCY_KEY_REUSED"


# -- claims (calls made of several transactions) ------------------------------------------------------


async def test_claim_then_complete_then_repeats_replay(ledger: IdempotencyLedger) -> None:
    t = now_us()
    await ledger.claim(SPACE, "k1", "Extract", t)
    with pytest.raises(ServiceUnavailable) as running:
        await ledger.claim(SPACE, "k1", "Extract", t + 1)
    assert running.value.reason == "IDEMPOTENCY_KEY_IN_PROGRESS"
    with pytest.raises(ServiceUnavailable):
        await ledger.replay(SPACE, "k1", "Extract", t + 1)
    assert (await ledger.try_claim(SPACE, "k1", "Extract", t + 1)).status is Status.RUNNING

    await ledger.complete(SPACE, "k1", b"done")
    for repeat in (ledger.claim(SPACE, "k1", "Extract", t + 2), ledger.replay(SPACE, "k1", "Extract", t + 2)):
        with pytest.raises(Replayed) as replay:
            await repeat
        assert replay.value.response == b"done"
    state = await ledger.try_claim(SPACE, "k1", "Extract", t + 2)
    assert (state.status, state.response) == (Status.DONE, b"done")


async def test_release_frees_a_claim_but_never_a_completed_key(ledger: IdempotencyLedger) -> None:
    t = now_us()
    await ledger.claim(SPACE, "k1", "Extract", t)
    await ledger.release(SPACE, "k1")
    assert (await ledger.try_claim(SPACE, "k1", "Extract", t)).status is Status.FREE  # claimed again
    await ledger.complete(SPACE, "k1", b"done")
    await ledger.release(SPACE, "k1")
    with pytest.raises(Replayed):
        await ledger.replay(SPACE, "k1", "Extract", t)


async def test_a_claim_older_than_its_lease_is_refused_as_abandoned(ledger: IdempotencyLedger) -> None:
    t = now_us()
    await ledger.claim(SPACE, "k1", "Extract", t)
    with pytest.raises(ServiceUnavailable):  # within the lease: still running
        await ledger.claim(SPACE, "k1", "Extract", t + LEASE_US - 1)
    with pytest.raises(FailedPrecondition) as info:
        await ledger.claim(SPACE, "k1", "Extract", t + LEASE_US + 1)
    assert info.value.reason == "IDEMPOTENCY_KEY_ABANDONED"
    assert info.value.metadata == {"idempotency_key": "k1"}


async def test_without_a_lease_a_claim_runs_until_its_record_expires(database: Database) -> None:
    ledger = IdempotencyLedger(database, TABLES["agent"])
    t = now_us()
    await ledger.claim(SPACE, "k1", "Chat", t)
    with pytest.raises(ServiceUnavailable):
        await ledger.claim(SPACE, "k1", "Chat", t + IDEMPOTENCY_TTL_US - 1)
    await ledger.claim(SPACE, "k1", "Chat", t + IDEMPOTENCY_TTL_US + 1)  # expired: free again


# -- expiry -------------------------------------------------------------------------------------------


async def test_a_key_is_free_again_after_24_hours_and_purge_deletes_old_records(
    ledger: IdempotencyLedger,
) -> None:
    t = now_us()
    await ledger.write(SPACE, idem("old"), t, effect("first"))
    await ledger.write(SPACE, idem("young"), t + IDEMPOTENCY_TTL_US // 2, effect("young"))
    with pytest.raises(Replayed):
        await ledger.write(SPACE, idem("old"), t + IDEMPOTENCY_TTL_US, effect("too early"))
    later = t + IDEMPOTENCY_TTL_US + 1
    await ledger.replay(SPACE, "old", "AddThing", later)  # expired: nothing to replay
    # An expired key may even serve another method now.
    assert await ledger.write(SPACE, idem("old", "Other"), later, effect("again")) == "again"
    assert await effect_notes(ledger.db) == ["first", "young", "again"]

    assert await ledger.purge(t + IDEMPOTENCY_TTL_US + IDEMPOTENCY_TTL_US // 2 + 1) == 1  # "young"
    assert await rows(ledger) == 1
    with pytest.raises(Replayed):
        await ledger.replay(SPACE, "old", "Other", later + 1)


# -- key spaces ---------------------------------------------------------------------------------------


async def test_keys_are_per_app_user_and_scope(ledger: IdempotencyLedger) -> None:
    t = now_us()
    spaces = [
        SPACE,
        KeySpace("app", "bob"),
        KeySpace("other-app", "alice"),
        KeySpace("app", "alice", "session-1"),
        KeySpace("app", "alice", "session-2"),
    ]
    for n, space in enumerate(spaces):
        assert await ledger.write(space, idem("same-key"), t, effect(f"w{n}")) == f"w{n}"
    for n, space in enumerate(spaces):
        with pytest.raises(Replayed) as replay:
            await ledger.replay(space, "same-key", "AddThing", t)
        assert replay.value.response == f"response:w{n}".encode()
    await ledger.release(KeySpace("app", "carol"), "same-key")
    assert await rows(ledger) == len(spaces)


async def test_keys_are_checked_for_length() -> None:
    assert check_key("k" * 128) == "k" * 128
    for bad in ("", "k" * 129):
        with pytest.raises(InvalidArgument) as info:
            check_key(bad)
        assert [v.field for v in info.value.violations] == ["idempotency_key"]


async def test_keys_of_any_unicode_round_trip(ledger: IdempotencyLedger) -> None:
    key = "clé-日本語-🙂-" + "é" * 100  # 128 characters, more bytes
    assert len(key) <= 128
    await ledger.write(SPACE, idem(key), now_us(), effect("u"))
    with pytest.raises(Replayed):
        await ledger.replay(SPACE, key, "AddThing", now_us())
    await ledger.replay(SPACE, key.upper(), "AddThing", now_us())  # keys are case-sensitive


# -- concurrency: one key, many callers at once ---------------------------------------------------------


async def test_concurrent_writes_with_one_key_apply_exactly_once(ledger: IdempotencyLedger) -> None:
    t = now_us()
    outcomes = await asyncio.gather(
        *(ledger.write(SPACE, idem("k1"), t, effect(f"w{n}")) for n in range(8)), return_exceptions=True
    )
    applied = [o for o in outcomes if isinstance(o, str)]
    replayed = [o for o in outcomes if isinstance(o, Replayed)]
    assert len(applied) == 1, outcomes
    assert len(replayed) == 7, outcomes
    assert {r.response for r in replayed} == {f"response:{applied[0]}".encode()}
    assert await effect_notes(ledger.db) == applied


async def test_concurrent_claims_of_one_key_exactly_one_wins(ledger: IdempotencyLedger) -> None:
    t = now_us()
    outcomes = await asyncio.gather(
        *(ledger.claim(SPACE, "k1", "Extract", t) for _ in range(8)), return_exceptions=True
    )
    assert sum(o is None for o in outcomes) == 1, outcomes
    losers = [o for o in outcomes if o is not None]
    assert all(
        isinstance(o, ServiceUnavailable) and o.reason == "IDEMPOTENCY_KEY_IN_PROGRESS" for o in losers
    )
    states = await asyncio.gather(*(ledger.try_claim(SPACE, "k2", "Extract", t) for _ in range(8)))
    assert [s.status for s in states].count(Status.FREE) == 1, states
    assert await rows(ledger) == 2
