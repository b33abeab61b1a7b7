"""SQLite group commit (sessionkit_server.common.group_commit): concurrent writes share one COMMIT, each
is answered only once that commit is done, and a write that fails fails alone; the state store's
rules (expected versions, idempotency keys) hold inside a group exactly as one by one."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, event, text

from sessionkit.errors import FailedPrecondition, SessionKitError, StateConflict
from sessionkit_server.common.db import Database
from sessionkit_server.state.service import StateService
from sessionkit_server.state.sql_store import SqlStateStore
from sessionkit_server.state.store import SessionKey


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'group.db'}")

    def schema(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
        conn.execute(text("CREATE TABLE item (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parent(id))"))

    await database.write(schema)
    yield database
    await database.close()


class Commits:
    """Counts the COMMITs of the writer's connection."""

    def __init__(self, db: Database) -> None:
        self.count = 0
        assert db._writer is not None
        event.listen(db._writer, "commit", self._on_commit)

    def _on_commit(self, _conn: Any) -> None:
        self.count += 1


async def in_one_group(db: Database, fns: list[Callable[[Connection], Any]]) -> list[Any]:
    """Run ``fns`` concurrently, queued behind a write that holds the writer until all are queued,
    so they form one group. Returns each one's result or exception."""
    gate = threading.Event()

    def hold(conn: Connection) -> None:
        gate.wait(10)

    holder = asyncio.ensure_future(db.write(hold))
    await asyncio.sleep(0.05)  # the holder runs on the writer thread now
    tasks = [asyncio.ensure_future(db.write(fn)) for fn in fns]
    await asyncio.sleep(0.05)  # all queued
    gate.set()
    await holder
    return list(await asyncio.gather(*tasks, return_exceptions=True))


def insert(item: int, parent: int | None = None) -> Callable[[Connection], int]:
    def run(conn: Connection) -> int:
        conn.execute(text("INSERT INTO item (id, parent) VALUES (:i, :p)"), {"i": item, "p": parent})
        return item

    return run


def items(db: Database) -> list[int]:
    with sqlite3.connect(db.path) as conn:  # a connection of its own: sees committed rows only
        return [row[0] for row in conn.execute("SELECT id FROM item ORDER BY id")]


async def test_concurrent_writes_share_one_commit_and_are_committed_when_answered(db: Database) -> None:
    commits = Commits(db)
    answered: list[list[int]] = []

    async def write_and_look(i: int) -> None:
        await db.write(insert(i))
        answered.append(items(db))  # what another connection sees the moment the write is answered

    gate = threading.Event()
    holder = asyncio.ensure_future(db.write(lambda conn: gate.wait(10)))
    await asyncio.sleep(0.05)
    tasks = [asyncio.ensure_future(write_and_look(i)) for i in range(1, 17)]
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.gather(holder, *tasks)
    assert commits.count == 2  # the holder's, and one for the 16 writes
    assert all(seen == list(range(1, 17)) for seen in answered)


async def test_a_failing_write_fails_alone_and_its_changes_are_rolled_back(db: Database) -> None:
    def insert_then_fail(conn: Connection) -> None:
        conn.execute(text("INSERT INTO item (id) VALUES (100)"))
        raise FailedPrecondition("refused after writing")

    results = await in_one_group(db, [insert(1), insert_then_fail, insert(2), insert(1), insert(3)])
    assert results[0] == 1 and results[2] == 2 and results[4] == 3
    assert isinstance(results[1], FailedPrecondition)
    assert "UNIQUE" in str(results[3])  # the second insert of 1 sees the first, as one by one
    assert items(db) == [1, 2, 3]


async def test_writes_before_a_lost_group_run_again_once(db: Database) -> None:
    calls: dict[int, int] = {}

    def counted(i: int) -> Callable[[Connection], int]:
        def run(conn: Connection) -> int:
            calls[i] = calls.get(i, 0) + 1
            return insert(i)(conn)

        return run

    def lose_the_transaction(conn: Connection) -> None:
        # What SQLite does by itself on a full disk or an I/O error: the whole transaction is gone.
        conn.connection.dbapi_connection.execute("ROLLBACK")  # type: ignore[union-attr]
        raise OSError("disk I/O error")

    results = await in_one_group(db, [counted(1), counted(2), lose_the_transaction, counted(3)])
    assert results[0] == 1 and results[1] == 2 and results[3] == 3
    assert isinstance(results[2], OSError)
    assert items(db) == [1, 2, 3]
    assert calls == {1: 2, 2: 2, 3: 1}  # 1 and 2 ran again; their first run was rolled back


async def test_a_failed_commit_fails_every_write_of_the_group(db: Database) -> None:
    def orphan_checked_at_commit(conn: Connection) -> None:
        conn.execute(text("PRAGMA defer_foreign_keys=ON"))
        conn.execute(text("INSERT INTO item (id, parent) VALUES (50, 999)"))

    results = await in_one_group(db, [insert(1), orphan_checked_at_commit, insert(2)])
    assert all("FOREIGN KEY" in str(r) for r in results), results
    assert items(db) == []  # none of them was acknowledged, none is stored
    assert await db.write(insert(7)) == 7  # and the writer goes on
    assert items(db) == [7]


async def test_state_writes_in_one_group_keep_expected_versions_and_idempotency_keys(tmp_path: Path) -> None:
    store = SqlStateStore(f"sqlite:///{tmp_path / 'state.db'}", history_limit=20)
    await store.start()
    service = StateService(store)
    try:
        key = SessionKey("app", "ada", "s")
        await service.create_session(key)
        gate = threading.Event()
        holder = asyncio.ensure_future(store.db.write(lambda conn: gate.wait(10)))
        await asyncio.sleep(0.05)
        writes = [
            service.set_value(key, "n", 1, None, "k1"),  # version 1
            service.set_value(key, "n", 2, 0, ""),  # stale expected version: refused alone
            service.set_value(key, "n", 99, None, "k1"),  # a repeat of k1: version 1 again, no change
            service.set_value(key, "n", 3, 1, ""),  # version 2
            service.increment(key, "c", 5, None, "k1"),  # k1 used by another write: refused alone
        ]
        tasks = [asyncio.ensure_future(w) for w in writes]
        await asyncio.sleep(0.05)
        gate.set()
        await holder
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert [getattr(r, "version", None) for r in results] == [1, None, 1, 2, None], results
        assert isinstance(results[1], StateConflict)
        assert isinstance(results[4], SessionKitError), results[4]
        assert "k1" in str(results[4])
        assert await service.get_state(key) == ({"n": 3}, 2)
    finally:
        await store.close()


async def test_a_write_after_close_is_refused_not_left_waiting(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'closed.db'}")
    await database.write(lambda conn: conn.execute(text("CREATE TABLE t (x INTEGER)")))
    await database.close()
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(database.write(lambda conn: None), timeout=10)
