"""The StateStore contract, run over every implementation (the ``state_store`` fixture is parametrized over
SQLite, SQLite behind the read cache, and PostgreSQL: tests/conftest.py). Only the StateStore interface is
used, so a new backend passes these modules or is not a StateStore. This one: the write unit of work."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import Connection
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine

from sessionkit.errors import FailedPrecondition
from sessionkit_server.common.db import Database
from sessionkit_server.state.store import (
    Change,
    JsonObject,
    Operation,
    SessionKey,
    StateStore,
    VersionRecord,
    WriteTx,
)
from tests.contract.state_store_support import KEY, create, event, now_us, state_of, write_set

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


def _driver(conn: Connection) -> Any:
    return conn.connection.dbapi_connection


async def test_a_keyed_write_costs_one_statement_more_than_an_unkeyed_one(state_store: StateStore) -> None:
    # The key's record is looked up within the session lock's query; only its insert is extra. A store
    # that checked keys in statements of their own would add round trips to every SDK write.
    await create(state_store)
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *rest: object) -> None:
        statements.append(statement)

    inner: Any = getattr(state_store, "inner", state_store)
    db: Database = inner.db
    # SQLite's write statements run on the driver connection (sessionkit_server.common.driver_sql):
    # counted by SQLite itself; PostgreSQL's through the engine.
    trace = not db.is_postgres
    if trace:
        await db.write(lambda conn: _driver(conn).set_trace_callback(statements.append))
        statements.clear()  # that transaction's COMMIT
    else:
        sa_event.listen(Engine, "before_cursor_execute", count)
    try:
        await write_set(state_store, KEY, "a", 1)
        plain, statements[:] = len(statements), []
        await write_set(state_store, KEY, "a", 2, idem="k")
        keyed, statements[:] = len(statements), []
        assert await write_set(state_store, KEY, "a", 3, idem="k") == b"v2"
        replayed = len(statements)
    finally:
        if trace:
            await db.write(lambda conn: _driver(conn).set_trace_callback(None))
        else:
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
