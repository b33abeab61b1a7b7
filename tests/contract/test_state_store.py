"""The StateStore contract, run over every implementation (the ``state_store`` fixture is
parametrized over SQLite, SQLite behind the read cache, and PostgreSQL: tests/conftest.py, shared with
the state service tests). Only the StateStore interface is used here, so a new backend passes this file
or is not a StateStore."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine

from sessionkit.errors import AlreadyExists, FailedPrecondition, SessionNotFound
from sessionkit.jsonvalues import JsonValue
from sessionkit_server.state.store import (
    Change,
    EventRecord,
    JsonObject,
    Operation,
    SessionKey,
    SessionRecord,
    StateStore,
    VersionRecord,
    WriteTx,
)

SECOND = 1_000_000
HISTORY_LIMIT = 20  # what the state_store fixture configures
KEY = SessionKey("app", "alice", "s1")


def now_us() -> int:
    return time.time_ns() // 1000


async def create(
    store: StateStore,
    key: SessionKey = KEY,
    *,
    ttl: int | None = None,
    initial: JsonObject | None = None,
    get_if_exists: bool = False,
    now: int | None = None,
) -> tuple[SessionRecord, bool]:
    return await store.create_session(key, ttl, initial, get_if_exists, now_us() if now is None else now)


async def write_set(
    store: StateStore, key: SessionKey, name: str, value: JsonValue, idem: str = "", now: int | None = None
) -> bytes | None:
    """One SET through the unit of work; returns the replayed response (None when applied)."""

    def apply(tx: WriteTx) -> bytes | None:
        if tx.replayed_response is not None:
            return tx.replayed_response
        tx.state[name] = value
        tx.commit(Change(Operation.SET, name, value), f"v{tx.next_version}".encode())
        return None

    return await store.write(key, idem, now_us() if now is None else now, apply)


def never_called(tx: WriteTx) -> None:
    raise AssertionError(f"apply ran on session {tx.session.key} that should not be writable")


def event(
    content: str, author: str = "", role: str = "user", metadata: JsonObject | None = None
) -> EventRecord:
    return EventRecord(0, role, content, author, metadata or {}, 0)


async def state_of(
    store: StateStore, key: SessionKey = KEY
) -> tuple[int, JsonObject, JsonObject, JsonObject]:
    record, own, user, app = await store.read_state(key, now_us())
    return record.version, own, user, app


# -- create / get -------------------------------------------------------------------------------------


async def test_create_new_session_starts_empty_at_version_zero(state_store: StateStore) -> None:
    t = now_us()
    record, created = await create(state_store, now=t)
    assert created is True
    assert record == SessionRecord(KEY, t, t, None, None, 0, 0)
    assert await state_store.get_session(KEY, t) == record
    assert await state_of(state_store) == (0, {}, {}, {})
    assert await state_store.list_versions(KEY, 10, None) == []


async def test_create_with_initial_state_is_version_one_with_a_history_entry(state_store: StateStore) -> None:
    t = now_us()
    initial: JsonObject = {"step": 1, "items": ["a", {"b": None}], "ok": True}
    record, created = await create(state_store, initial=initial, ttl=60, now=t)
    assert created and record.version == 1
    assert record.ttl_seconds == 60 and record.expire_us == t + 60 * SECOND
    assert await state_of(state_store) == (1, initial, {}, {})
    assert await state_store.list_versions(KEY, 10, None) == [
        VersionRecord(1, Operation.SAVE, "", None, initial, t)
    ]


async def test_create_existing_session_returns_it_with_get_if_exists_else_already_exists(
    state_store: StateStore,
) -> None:
    original, _ = await create(state_store, initial={"a": 1})
    again, created = await create(state_store, initial={"a": 2}, ttl=5, get_if_exists=True)
    assert created is False
    assert again == original  # the existing session as it is: not re-initialised, no ttl added
    assert await state_of(state_store) == (1, {"a": 1}, {}, {})

    with pytest.raises(AlreadyExists) as info:
        await create(state_store, initial={"a": 3})
    assert info.value.reason == "SESSION_EXISTS"
    assert await state_of(state_store) == (1, {"a": 1}, {}, {})


async def test_get_session_is_none_for_unknown_and_expired_sessions(state_store: StateStore) -> None:
    t = now_us()
    assert await state_store.get_session(KEY, t) is None
    await create(state_store, ttl=1, now=t)
    assert await state_store.get_session(KEY, t + SECOND // 2) is not None
    assert await state_store.get_session(KEY, t + SECOND) is None  # expires at exactly create + ttl
    assert await state_store.get_session(KEY, t + 5 * SECOND) is None
    with pytest.raises(SessionNotFound):
        await state_store.read_state(KEY, t + 5 * SECOND)
    with pytest.raises(SessionNotFound):
        await state_store.write(KEY, "", t + 5 * SECOND, never_called)
    with pytest.raises(SessionNotFound):
        await state_store.append_event(KEY, event("late"), "", t + 5 * SECOND)
    page = await state_store.list_sessions("app", "alice", 10, None, t + 5 * SECOND)
    assert page.sessions == []


async def test_a_write_extends_the_ttl(state_store: StateStore) -> None:
    t = now_us()
    await create(state_store, ttl=10, now=t)
    await write_set(state_store, KEY, "a", 1, now=t + 8 * SECOND)
    record = await state_store.get_session(KEY, t + 15 * SECOND)
    assert record is not None and record.expire_us == t + 18 * SECOND


async def test_an_expired_session_is_replaced_by_a_fresh_one_on_create(state_store: StateStore) -> None:
    t = now_us()
    await create(state_store, ttl=1, initial={"old": True}, now=t)
    await write_set(state_store, KEY, "x", 1, idem="k1", now=t)
    await state_store.append_event(KEY, event("old event"), "e1", t)

    later = t + 2 * SECOND
    record, created = await create(state_store, now=later)
    assert created is True
    assert record.version == 0 and record.create_us == later and record.event_count == 0
    assert await state_of(state_store) == (0, {}, {}, {})
    assert await state_store.list_events(KEY, 10, 0, 0, "") == []
    assert await state_store.list_versions(KEY, 10, None) == []
    assert await write_set(state_store, KEY, "x", 2, idem="k1", now=later) is None  # not a replay


# -- list ------------------------------------------------------------------------------------------------


async def test_list_sessions_pages_by_session_id_with_after(state_store: StateStore) -> None:
    t = now_us()
    ids = [f"s{i:02d}" for i in range(25)]
    for session_id in random.Random(7).sample(ids, len(ids)):
        await create(state_store, SessionKey("app", "alice", session_id), now=t)
    await create(state_store, SessionKey("app", "alice", "s99-expired"), ttl=1, now=t)

    seen: list[str] = []
    sizes: list[int] = []
    after: str | None = None
    while True:
        page = await state_store.list_sessions("app", "alice", 10, after, t + 2 * SECOND)
        sizes.append(len(page.sessions))
        seen.extend(r.key.session_id for r in page.sessions)
        if page.next_after is None:
            break
        assert page.next_after == page.sessions[-1].key.session_id
        after = page.next_after
    assert seen == ids
    assert sizes == [10, 10, 5]

    exact = await state_store.list_sessions("app", "alice", 25, None, t + 2 * SECOND)
    assert len(exact.sessions) == 25 and exact.next_after is None


async def test_users_and_apps_never_see_each_others_sessions_or_state(state_store: StateStore) -> None:
    acme = SessionKey("app", "acme", "s1")
    acme_corp = SessionKey("app", "acme-corp", "s1")  # same session id, a user id sharing a prefix
    other_app = SessionKey("app-2", "acme", "s1")
    for key, value in ((acme, "acme"), (acme_corp, "corp"), (other_app, "app-2")):
        await create(state_store, key, initial={"owner": value})

        def apply(tx: WriteTx, value: str = value) -> None:
            tx.user_state()["who"] = value
            tx.app_state()["app"] = value
            tx.commit(Change(Operation.SET, "user:who", value), b"")

        await state_store.write(key, "", now_us(), apply)

    t = now_us()
    assert [r.key for r in (await state_store.list_sessions("app", "acme", 10, None, t)).sessions] == [acme]
    assert [r.key for r in (await state_store.list_sessions("app", "acme-corp", 10, None, t)).sessions] == [
        acme_corp
    ]
    assert (await state_store.list_sessions("app", "acm", 10, None, t)).sessions == []
    assert await state_of(state_store, acme) == (2, {"owner": "acme"}, {"who": "acme"}, {"app": "corp"})
    assert await state_of(state_store, acme_corp) == (2, {"owner": "corp"}, {"who": "corp"}, {"app": "corp"})
    assert await state_of(state_store, other_app) == (
        2,
        {"owner": "app-2"},
        {"who": "app-2"},
        {"app": "app-2"},
    )

    await state_store.append_event(acme, event("hello acme"), "", t)
    assert await state_store.list_events(acme_corp, 10, 0, 0, "") == []
    assert await state_store.delete_session(acme) is True
    assert await state_store.get_session(acme_corp, now_us()) is not None
    assert await state_store.get_session(other_app, now_us()) is not None


async def test_delete_removes_state_events_versions_and_idempotency_records(state_store: StateStore) -> None:
    await create(state_store, initial={"a": 1})
    await write_set(state_store, KEY, "b", 2, idem="write-1")
    await state_store.append_event(KEY, event("hi"), "event-1", now_us())

    assert await state_store.delete_session(KEY) is True
    assert await state_store.get_session(KEY, now_us()) is None
    assert await state_store.delete_session(KEY) is False

    # A new session under the same key starts from nothing (SQLite may even reuse the row id).
    record, created = await create(state_store)
    assert created and record.version == 0 and record.event_count == 0
    assert await state_of(state_store) == (0, {}, {}, {})
    assert await state_store.list_versions(KEY, 10, None) == []
    assert await state_store.list_events(KEY, 10, 0, 0, "") == []
    assert await write_set(state_store, KEY, "b", 3, idem="write-1") is None
    assert (await state_store.append_event(KEY, event("new"), "event-1", now_us())).content == "new"


# -- the write unit of work ---------------------------------------------------------------------------------


async def test_write_persists_state_bumps_version_and_records_history(state_store: StateStore) -> None:
    t0 = now_us()
    await create(state_store, now=t0)
    t1 = t0 + 10

    def set_a(tx: WriteTx) -> tuple[bytes | None, int, int, JsonObject]:
        seen = (tx.replayed_response, tx.session.version, tx.next_version, dict(tx.state))
        tx.state["a"] = {"nested": [1, 2.5, "x", None, True]}
        tx.commit(Change(Operation.SET, "a", tx.state["a"]), b"ok")
        return seen

    assert await state_store.write(KEY, "", t1, set_a) == (None, 0, 1, {})
    assert await state_of(state_store) == (1, {"a": {"nested": [1, 2.5, "x", None, True]}}, {}, {})
    record = await state_store.get_session(KEY, t1)
    assert record is not None and record.update_us == t1 and record.create_us == t0
    assert await state_store.list_versions(KEY, 10, None) == [
        VersionRecord(
            1,
            Operation.SET,
            "a",
            {"nested": [1, 2.5, "x", None, True]},
            {"a": {"nested": [1, 2.5, "x", None, True]}},
            t1,
        )
    ]

    def clear(tx: WriteTx) -> tuple[int, int]:
        tx.state.clear()
        tx.commit(Change(Operation.CLEAR), b"ok")
        return tx.session.version, tx.next_version

    assert await state_store.write(KEY, "", t1 + 1, clear) == (1, 2)
    assert await state_of(state_store) == (2, {}, {}, {})


async def test_write_without_commit_persists_nothing(state_store: StateStore) -> None:
    await create(state_store, initial={"a": 1})

    def change_without_commit(tx: WriteTx) -> str:
        tx.state["a"] = 2
        tx.user_state()["u"] = 1
        tx.app_state()["p"] = 1
        return "returned"

    assert await state_store.write(KEY, "k", now_us(), change_without_commit) == "returned"
    assert await state_of(state_store) == (1, {"a": 1}, {}, {})
    assert [v.version for v in await state_store.list_versions(KEY, 10, None)] == [1]
    assert await write_set(state_store, KEY, "a", 3, idem="k") is None  # the key was not consumed


async def test_user_scope_is_shared_by_a_users_sessions_and_app_scope_by_all_users(
    state_store: StateStore,
) -> None:
    s1, s2 = SessionKey("app", "alice", "s1"), SessionKey("app", "alice", "s2")
    bob = SessionKey("app", "bob", "s1")
    for key in (s1, s2, bob):
        await create(state_store, key)

    def set_scopes(tx: WriteTx) -> None:
        tx.user_state()["theme"] = "dark"
        tx.app_state()["banner"] = "hello"
        tx.commit(Change(Operation.SET, "user:theme", "dark"), b"")

    await state_store.write(s1, "", now_us(), set_scopes)

    assert await state_of(state_store, s1) == (1, {}, {"theme": "dark"}, {"banner": "hello"})
    assert await state_of(state_store, s2) == (0, {}, {"theme": "dark"}, {"banner": "hello"})
    assert await state_of(state_store, bob) == (0, {}, {}, {"banner": "hello"})

    def bob_sets_banner(tx: WriteTx) -> tuple[JsonObject, JsonObject]:
        seen = dict(tx.app_state()), dict(tx.user_state())
        tx.app_state()["banner"] = "bye"
        tx.commit(Change(Operation.SET, "app:banner", "bye"), b"")
        return seen

    assert await state_store.write(bob, "", now_us(), bob_sets_banner) == ({"banner": "hello"}, {})
    assert await state_of(state_store, bob) == (1, {}, {}, {"banner": "bye"})
    assert await state_of(state_store, s2) == (0, {}, {"theme": "dark"}, {"banner": "bye"})


async def test_an_exception_inside_a_write_leaves_nothing_written(state_store: StateStore) -> None:
    await create(state_store, initial={"a": 1})

    class Boom(RuntimeError):
        pass

    def fail_after_commit(tx: WriteTx) -> None:
        tx.state["a"] = 2
        tx.state["b"] = 3
        tx.user_state()["u"] = 1
        tx.app_state()["p"] = 1
        tx.commit(Change(Operation.SET, "a", 2), b"response")
        raise Boom("boom")

    with pytest.raises(Boom, match="boom"):  # the very exception apply raised
        await state_store.write(KEY, "idem-1", now_us(), fail_after_commit)
    assert await state_of(state_store) == (1, {"a": 1}, {}, {})
    assert [v.version for v in await state_store.list_versions(KEY, 10, None)] == [1]
    record = await state_store.get_session(KEY, now_us())
    assert record is not None and record.version == 1
    # The idempotency key was not consumed: the retry is applied.
    assert await write_set(state_store, KEY, "a", 2, idem="idem-1") is None
    assert await state_of(state_store) == (2, {"a": 2}, {}, {})


async def test_a_repeated_idempotency_key_replays_the_first_response(state_store: StateStore) -> None:
    other = SessionKey("app", "alice", "s2")
    await create(state_store)
    await create(state_store, other)

    def set_n(tx: WriteTx) -> bytes | None:
        if tx.replayed_response is None:
            tx.state["n"] = 1
            tx.commit(Change(Operation.SET, "n", 1), b"\x00first response\xff")
        return tx.replayed_response

    assert await state_store.write(KEY, "req-1", now_us(), set_n) is None
    assert await state_store.write(KEY, "req-1", now_us(), set_n) == b"\x00first response\xff"
    assert await state_of(state_store) == (1, {"n": 1}, {}, {})

    # Another key, or the same key on another session, is a new write.
    assert await write_set(state_store, KEY, "n", 2, idem="req-2") is None
    assert await write_set(state_store, other, "n", 5, idem="req-1") is None
    assert await state_of(state_store) == (2, {"n": 2}, {}, {})
    assert await write_set(state_store, KEY, "n", 9, idem="req-2") == b"v2"
    assert await state_of(state_store) == (2, {"n": 2}, {}, {})


async def test_a_keyed_write_costs_one_statement_more_than_an_unkeyed_one(state_store: StateStore) -> None:
    # The key's record is looked up within the session lock's query; only its insert is extra. A store
    # that checked keys in statements of their own would add round trips to every SDK write.
    await create(state_store)
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *rest: object) -> None:
        statements.append(statement)

    sa_event.listen(Engine, "before_cursor_execute", count)
    try:
        await write_set(state_store, KEY, "a", 1)
        plain, statements[:] = len(statements), []
        await write_set(state_store, KEY, "a", 2, idem="k")
        keyed, statements[:] = len(statements), []
        assert await write_set(state_store, KEY, "a", 3, idem="k") == b"v2"
        replayed = len(statements)
    finally:
        sa_event.remove(Engine, "before_cursor_execute", count)
    assert keyed == plain + 1
    assert replayed < plain


async def test_an_idempotency_key_is_never_replayed_across_writes_and_events(state_store: StateStore) -> None:
    await create(state_store)
    await write_set(state_store, KEY, "a", 1, idem="shared")
    with pytest.raises(FailedPrecondition) as info:
        await state_store.append_event(KEY, event("hi"), "shared", now_us())
    assert info.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert await state_store.list_events(KEY, 10, 0, 0, "") == []

    # The other direction: a state write with an event's key is refused before apply runs.
    first = await state_store.append_event(KEY, event("hi"), "ev-key", now_us())

    def must_not_run(tx: WriteTx) -> None:
        raise AssertionError("apply ran for a key an event append used")

    with pytest.raises(FailedPrecondition) as info:
        await state_store.write(KEY, "ev-key", now_us(), must_not_run)
    assert info.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert info.value.metadata["method"] == "an event append"
    assert await state_of(state_store) == (1, {"a": 1}, {}, {})
    assert await state_store.list_events(KEY, 10, 0, 0, "") == [first]


async def test_concurrent_writes_to_one_session_are_serialized(state_store: StateStore) -> None:
    await create(state_store)
    callers = 16

    def increment(tx: WriteTx) -> int:
        current = tx.state.get("n", 0)
        assert isinstance(current, int)
        tx.state["n"] = current + 1
        tx.user_state()["n"] = current + 1
        tx.commit(Change(Operation.INCREMENT, "n", current + 1), b"")
        return tx.next_version

    writes = [state_store.write(KEY, "", now_us(), increment) for _ in range(callers)]
    versions = await asyncio.gather(*writes)
    assert sorted(versions) == list(range(1, callers + 1))
    assert await state_of(state_store) == (callers, {"n": callers}, {"n": callers}, {})


async def test_apply_runs_once_and_what_it_holds_when_it_returns_is_persisted(
    state_store: StateStore,
) -> None:
    await create(state_store)
    calls: list[int] = []

    def commit_then_change(tx: WriteTx) -> None:
        calls.append(tx.next_version)
        tx.commit(Change(Operation.SET, "x", 1), b"")
        tx.state["x"] = 1  # commit() only marks the write: it is persisted when apply returns
        tx.user_state()["late"] = True

    await state_store.write(KEY, "", now_us(), commit_then_change)
    assert calls == [1]
    assert await state_of(state_store) == (1, {"x": 1}, {"late": True}, {})


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
