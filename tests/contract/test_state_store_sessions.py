"""The StateStore contract, run over every implementation (the ``state_store`` fixture is parametrized over
SQLite, SQLite behind the read cache, and PostgreSQL: tests/conftest.py). Only the StateStore interface is
used, so a new backend passes these modules or is not a StateStore. This one: create, get, list and delete."""

from __future__ import annotations

import random

import pytest

from sessionkit.errors import AlreadyExists, SessionNotFound
from sessionkit_server.state.store import (
    Change,
    JsonObject,
    Operation,
    SessionKey,
    SessionRecord,
    StateStore,
    VersionRecord,
    WriteTx,
)
from tests.contract.state_store_support import (
    KEY,
    SECOND,
    create,
    event,
    never_called,
    now_us,
    state_of,
    write_set,
)

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
