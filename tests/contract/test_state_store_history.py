"""The StateStore contract, run over every implementation (the ``state_store`` fixture is parametrized over
SQLite, SQLite behind the read cache, and PostgreSQL: tests/conftest.py). Only the StateStore interface is
used, so a new backend passes these modules or is not a StateStore. This one: history, events and reaping."""

from __future__ import annotations

from sessionkit_server.state.store import Operation, SessionKey, StateStore
from tests.contract.state_store_support import (
    HISTORY_LIMIT,
    KEY,
    SECOND,
    create,
    event,
    now_us,
    state_of,
    write_set,
)

# -- history ---------------------------------------------------------------------------------------------


async def test_history_is_pruned_to_the_history_limit(state_store: StateStore) -> None:
    await create(state_store)
    total = HISTORY_LIMIT + 5
    for i in range(1, total + 1):
        await write_set(state_store, KEY, "i", i)
    versions = await state_store.list_versions(KEY, 1000, None)
    assert [v.version for v in versions] == list(range(total, 5, -1))
    assert await state_store.get_version(KEY, 5) is None
    oldest = await state_store.get_version(KEY, 6)
    assert oldest is not None and oldest.state == {"i": 6}
    assert await state_of(state_store) == (total, {"i": total}, {}, {})


async def test_list_versions_newest_first_with_before_and_oldest_first_with_after(
    state_store: StateStore,
) -> None:
    await create(state_store)
    for i in range(1, 6):
        await write_set(state_store, KEY, f"k{i}", i)

    newest = await state_store.list_versions(KEY, 2, None)
    assert [(v.version, v.key, v.value) for v in newest] == [(5, "k5", 5), (4, "k4", 4)]
    assert newest[0].state == {"k1": 1, "k2": 2, "k3": 3, "k4": 4, "k5": 5}
    assert newest[1].state == {"k1": 1, "k2": 2, "k3": 3, "k4": 4}
    assert [v.version for v in await state_store.list_versions(KEY, 2, 4)] == [3, 2]
    assert [v.version for v in await state_store.list_versions(KEY, 10, 2)] == [1]
    assert [v.version for v in await state_store.list_versions(KEY, 2, None, after=2)] == [3, 4]
    assert [v.version for v in await state_store.list_versions(KEY, 10, None, after=0)] == [1, 2, 3, 4, 5]
    assert await state_store.list_versions(KEY, 10, None, after=5) == []
    v3 = await state_store.get_version(KEY, 3)
    assert v3 is not None and v3.operation == Operation.SET and v3.state == {"k1": 1, "k2": 2, "k3": 3}
    assert await state_store.list_versions(SessionKey("app", "alice", "unknown"), 10, None) == []


# -- events ------------------------------------------------------------------------------------------------


async def test_append_event_assigns_id_and_time_and_is_idempotent(state_store: StateStore) -> None:
    await create(state_store)
    t = now_us()
    first = await state_store.append_event(
        KEY, event("hello", "alice", metadata={"tokens": 3, "tool": {"id": "c1"}}), "ev-1", t
    )
    assert first.id > 0 and first.create_us == t
    assert (first.role, first.content, first.author) == ("user", "hello", "alice")
    assert first.metadata == {"tokens": 3, "tool": {"id": "c1"}}

    repeat = await state_store.append_event(KEY, event("hello again"), "ev-1", t + 100)
    assert repeat == first
    assert await state_store.list_events(KEY, 10, 0, 0, "") == [first]
    record = await state_store.get_session(KEY, now_us())
    assert record is not None and record.event_count == 1

    second = await state_store.append_event(KEY, event("hello"), "", t + 200)
    third = await state_store.append_event(KEY, event("hello"), "", t + 300)
    assert first.id < second.id < third.id
    record = await state_store.get_session(KEY, now_us())
    assert record is not None and record.event_count == 3


async def test_list_events_pages_after_id_tails_and_filters_by_author(state_store: StateStore) -> None:
    await create(state_store)
    await create(state_store, SessionKey("app", "alice", "s2"))
    await state_store.append_event(SessionKey("app", "alice", "s2"), event("elsewhere", "bot"), "", now_us())
    events = [
        await state_store.append_event(KEY, event(f"m{i}", "bot" if i % 2 else "alice"), "", now_us())
        for i in range(7)
    ]

    page1 = await state_store.list_events(KEY, 3, 0, 0, "")
    page2 = await state_store.list_events(KEY, 3, page1[-1].id, 0, "")
    page3 = await state_store.list_events(KEY, 3, page2[-1].id, 0, "")
    assert [e.content for e in page1 + page2 + page3] == [f"m{i}" for i in range(7)]
    assert page1 + page2 + page3 == events
    assert await state_store.list_events(KEY, 3, events[-1].id, 0, "") == []

    assert [e.content for e in await state_store.list_events(KEY, 100, 0, 2, "")] == ["m5", "m6"]
    assert [e.content for e in await state_store.list_events(KEY, 100, 0, 50, "")] == [
        f"m{i}" for i in range(7)
    ]
    assert [e.content for e in await state_store.list_events(KEY, 100, 0, 0, "bot")] == ["m1", "m3", "m5"]
    assert [e.content for e in await state_store.list_events(KEY, 100, 0, 2, "alice")] == ["m4", "m6"]
    assert await state_store.list_events(KEY, 100, 0, 0, "nobody") == []


# -- reaping -------------------------------------------------------------------------------------------------


async def test_reap_deletes_expired_sessions_and_old_idempotency_records(state_store: StateStore) -> None:
    t = now_us()
    short, long, forever = (SessionKey("app", "alice", name) for name in ("short", "long", "forever"))
    await create(state_store, short, ttl=1, initial={"x": 1}, now=t)
    await state_store.append_event(short, event("e"), "", t)
    await create(state_store, long, ttl=3600, now=t)
    await create(state_store, forever, now=t)
    await write_set(state_store, forever, "a", 1, idem="old", now=t)
    await write_set(state_store, forever, "a", 2, idem="new", now=t + 10 * SECOND)

    assert await state_store.reap(t + 20 * SECOND, t + 5 * SECOND) == 1
    assert await state_store.get_session(short, t) is None  # gone, not merely expired
    assert await state_store.get_session(long, t + 20 * SECOND) is not None
    assert await state_store.get_session(forever, t + 20 * SECOND) is not None
    assert await state_store.reap(t + 20 * SECOND, t + 5 * SECOND) == 0

    # The old key is forgotten (applied again); the recent one still replays.
    assert await write_set(state_store, forever, "a", 3, idem="old", now=t + 20 * SECOND) is None
    assert await write_set(state_store, forever, "a", 4, idem="new", now=t + 20 * SECOND) == b"v2"

    # Nothing of the reaped session survives into a new one under its key.
    await create(state_store, short, now=t + 20 * SECOND)
    assert await state_store.list_events(short, 10, 0, 0, "") == []
    assert await state_store.list_versions(short, 10, None) == []
