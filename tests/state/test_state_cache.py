"""CachingStateStore over the exclusive SQLite store (how the embedded server runs): reads after every
kind of write see that write, a read racing a write never caches what it read, cached entries honour
their TTL, and the cache is bounded. The StateStore contract itself runs over this store too (the
``sqlite-cached`` kind of the ``state_store`` fixture)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sessionkit.errors import SessionNotFound
from sessionkit.jsonvalues import JsonValue
from sessionkit_server.common.db import DatabaseLocked
from sessionkit_server.state.cached_store import CachingStateStore
from sessionkit_server.state.sql_store import SqlStateStore
from sessionkit_server.state.store import (
    Change,
    EventRecord,
    JsonObject,
    Operation,
    SessionKey,
    SessionRecord,
    WriteTx,
)

SECOND = 1_000_000
S1 = SessionKey("app", "alice", "s1")
S2 = SessionKey("app", "alice", "s2")
BOB = SessionKey("app", "bob", "s1")

#: The store's read under the cache (StateStore.read_state_text): the scopes as their JSON texts.
ReadState = Callable[[SessionKey, int], Awaitable[tuple[SessionRecord, str, str, str]]]


def now_us() -> int:
    return time.time_ns() // 1000


class Spy:
    """Counts the reads that reach the database under the cache."""

    def __init__(self, inner: SqlStateStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[SessionKey] = []
        self._read: ReadState = inner.read_state_text
        monkeypatch.setattr(inner, "read_state_text", self.read_state_text)

    async def read_state_text(self, key: SessionKey, now: int) -> tuple[SessionRecord, str, str, str]:
        self.calls.append(key)
        return await self._read(key, now)


async def open_cache(path: Path, max_sessions: int = 10_000) -> CachingStateStore:
    store = CachingStateStore(
        SqlStateStore(f"sqlite:///{path}", history_limit=20, exclusive=True), max_sessions=max_sessions
    )
    await store.start()
    return store


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[CachingStateStore]:
    store = await open_cache(tmp_path / "state.db")
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def spy(cache: CachingStateStore, monkeypatch: pytest.MonkeyPatch) -> Spy:
    assert isinstance(cache.inner, SqlStateStore)
    return Spy(cache.inner, monkeypatch)


def setter(**values: JsonValue) -> Callable[[WriteTx], None]:
    """An apply function: ``user__k`` / ``app__k`` name scoped keys, anything else an own key."""

    def apply(tx: WriteTx) -> None:
        for name, value in values.items():
            if name.startswith("user__"):
                tx.user_state()[name[6:]] = value
            elif name.startswith("app__"):
                tx.app_state()[name[5:]] = value
            else:
                tx.state[name] = value
        tx.commit(Change(Operation.SET, next(iter(values)), None), b"")

    return apply


async def read(
    store: CachingStateStore, key: SessionKey = S1, now: int | None = None
) -> tuple[int, JsonObject, JsonObject, JsonObject]:
    record, own, user, app = await store.read_state(key, now_us() if now is None else now)
    return record.version, own, user, app


async def cached_read(
    store: CachingStateStore, spy: Spy, key: SessionKey = S1, now: int | None = None
) -> tuple[int, JsonObject, JsonObject, JsonObject]:
    """Read ``key`` twice; the second read must be served by the cache (so the test that follows
    really starts from a cached entry)."""
    first = await read(store, key, now)
    calls = len(spy.calls)
    assert await read(store, key, now) == first
    assert len(spy.calls) == calls, f"{key} was not served from the cache"
    return first


# -- reads after writes --------------------------------------------------------------------------------------


async def test_reads_are_served_from_the_cache_until_a_write(cache: CachingStateStore, spy: Spy) -> None:
    await cache.create_session(S1, None, {"a": 1}, False, now_us())
    assert await read(cache) == (1, {"a": 1}, {}, {})
    assert await read(cache) == (1, {"a": 1}, {}, {})
    assert await cache.get_session(S1, now_us()) is not None
    assert spy.calls == [S1]


async def test_a_read_after_a_write_sees_the_write(cache: CachingStateStore, spy: Spy) -> None:
    await cache.create_session(S1, None, {"a": 1}, False, now_us())
    await cached_read(cache, spy)
    t = now_us()
    await cache.write(S1, "", t, setter(a=2, user__u="x", app__p="y"))
    assert await read(cache) == (2, {"a": 2}, {"u": "x"}, {"p": "y"})
    record = await cache.get_session(S1, now_us())
    assert record is not None and (record.version, record.update_us) == (2, t)


async def test_a_write_that_commits_nothing_or_fails_keeps_reads_right(
    cache: CachingStateStore, spy: Spy
) -> None:
    await cache.create_session(S1, None, {"a": 1}, False, now_us())
    await cached_read(cache, spy)

    def fail(tx: WriteTx) -> None:
        tx.state["a"] = 99
        tx.commit(Change(Operation.SET, "a", 99), b"")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await cache.write(S1, "", now_us(), fail)
    assert await read(cache) == (1, {"a": 1}, {}, {})
    await cache.write(S1, "", now_us(), lambda tx: tx.state.update(a=98))  # no commit
    assert await read(cache) == (1, {"a": 1}, {}, {})


async def test_a_user_scope_write_through_another_session_is_seen_by_every_session_of_the_user(
    cache: CachingStateStore, spy: Spy
) -> None:
    for key in (S1, S2, BOB):
        await cache.create_session(key, None, None, False, now_us())
        await cached_read(cache, spy, key)
    await cache.write(S2, "", now_us(), setter(user__theme="dark"))
    assert await read(cache, S1) == (0, {}, {"theme": "dark"}, {})
    assert await read(cache, S2) == (1, {}, {"theme": "dark"}, {})
    assert await read(cache, BOB) == (0, {}, {}, {})
    # And again once S1's entry is cached with the new value.
    await cached_read(cache, spy, S1)
    await cache.write(S2, "", now_us(), setter(user__theme="light"))
    assert (await read(cache, S1))[2] == {"theme": "light"}


async def test_an_app_scope_write_through_another_users_session_is_seen_by_every_session_of_the_app(
    cache: CachingStateStore, spy: Spy
) -> None:
    other_app = SessionKey("other", "alice", "s1")
    for key in (S1, S2, BOB, other_app):
        await cache.create_session(key, None, None, False, now_us())
        await cached_read(cache, spy, key)
    await cache.write(BOB, "", now_us(), setter(app__banner="hello"))
    assert await read(cache, S1) == (0, {}, {}, {"banner": "hello"})
    assert await read(cache, S2) == (0, {}, {}, {"banner": "hello"})
    assert await read(cache, BOB) == (1, {}, {}, {"banner": "hello"})
    assert await read(cache, other_app) == (0, {}, {}, {})


async def test_a_read_after_append_event_sees_the_new_event_count_and_expiry(
    cache: CachingStateStore, spy: Spy
) -> None:
    t = now_us()
    await cache.create_session(S1, 60, None, False, t)
    await cached_read(cache, spy, now=t)
    assert (await cache.get_session(S1, t)).event_count == 0  # type: ignore[union-attr]
    later = t + 30 * SECOND
    await cache.append_event(S1, EventRecord(0, "user", "hi", "", {}, 0), "", later)
    for record in ((await cache.read_state(S1, later))[0], await cache.get_session(S1, later)):
        assert record is not None
        assert (record.event_count, record.update_us, record.expire_us) == (1, later, later + 60 * SECOND)
    # The TTL the event extended is honoured: alive past the first expiry.
    assert await read(cache, now=t + 70 * SECOND) == (0, {}, {}, {})


async def test_a_read_after_delete_session_is_not_found(cache: CachingStateStore, spy: Spy) -> None:
    await cache.create_session(S1, None, {"a": 1}, False, now_us())
    await cached_read(cache, spy)
    assert await cache.delete_session(S1) is True
    with pytest.raises(SessionNotFound):
        await read(cache)
    assert await cache.get_session(S1, now_us()) is None
    # Created again: the new session, not the old one.
    await cache.create_session(S1, None, {"b": 2}, False, now_us())
    assert await read(cache) == (1, {"b": 2}, {}, {})


async def test_a_read_after_reap_does_not_return_a_reaped_session(cache: CachingStateStore, spy: Spy) -> None:
    t = now_us()
    keep = SessionKey("app", "alice", "keep")
    await cache.create_session(S1, 1, {"a": 1}, False, t)
    await cache.create_session(keep, None, {"k": 1}, False, t)
    await cached_read(cache, spy, S1, now=t)
    await cached_read(cache, spy, keep, now=t)
    assert await cache.reap(t + 2 * SECOND, 0) == 1
    # Read with a clock before the expiry: an entry cached before the reap would still be alive.
    with pytest.raises(SessionNotFound):
        await read(cache, S1, now=t)
    assert await cache.get_session(S1, t) is None
    assert await read(cache, keep, now=t) == (1, {"k": 1}, {}, {})


async def test_a_read_after_create_over_an_expired_session_sees_the_new_session(
    cache: CachingStateStore, spy: Spy
) -> None:
    t = now_us()
    await cache.create_session(S1, 1, {"old": True}, False, t)
    await cached_read(cache, spy, now=t)
    later = t + 2 * SECOND
    _, created = await cache.create_session(S1, None, {"new": True}, False, later)
    assert created is True
    assert await read(cache, now=later) == (1, {"new": True}, {}, {})
    # Even with a clock at which the old entry would still have been alive.
    assert await read(cache, now=t) == (1, {"new": True}, {}, {})
    fetched = await cache.get_session(S1, t)
    assert fetched is not None and fetched.create_us == later and fetched.ttl_seconds is None


async def test_create_with_get_if_exists_returns_the_current_session(
    cache: CachingStateStore, spy: Spy
) -> None:
    await cache.create_session(S1, None, {"a": 1}, False, now_us())
    await cache.write(S1, "", now_us(), setter(a=2))
    await cached_read(cache, spy)
    record, created = await cache.create_session(S1, None, {"a": 3}, True, now_us())
    assert created is False and record.version == 2
    assert await read(cache) == (2, {"a": 2}, {}, {})


# -- reads racing writes -------------------------------------------------------------------------------------


async def test_a_read_that_started_before_a_write_and_ends_after_it_is_not_cached(
    cache: CachingStateStore, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    await cache.create_session(S1, None, {"a": 1}, False, now_us())
    original: ReadState = cache.inner.read_state_text
    read_done, gate = asyncio.Event(), asyncio.Event()

    async def held_read(key: SessionKey, now: int) -> tuple[SessionRecord, str, str, str]:
        result = await original(key, now)  # read from the database before the write...
        read_done.set()
        await gate.wait()  # ...and handed back after it
        return result

    with monkeypatch.context() as patch:
        patch.setattr(cache.inner, "read_state_text", held_read)
        slow = asyncio.create_task(cache.read_state(S1, now_us()))
        await asyncio.wait_for(read_done.wait(), 5)
        await cache.write(S1, "", now_us(), setter(a=2, user__u=1))
        gate.set()
        record, own, _, _ = await asyncio.wait_for(slow, 5)
        assert (record.version, own) == (1, {"a": 1})  # what it read, before the write

    calls = len(spy.calls)
    assert await read(cache) == (2, {"a": 2}, {"u": 1}, {})
    assert len(spy.calls) == calls + 1  # nothing was cached: read from the database
    assert await read(cache) == (2, {"a": 2}, {"u": 1}, {})


async def test_a_read_during_a_write_sees_the_committed_state_then_the_write(
    cache: CachingStateStore, spy: Spy
) -> None:
    await cache.create_session(S1, None, {"a": 1}, False, now_us())
    in_apply, release = threading.Event(), threading.Event()

    def slow_write(tx: WriteTx) -> None:  # runs in the database's write thread
        in_apply.set()
        assert release.wait(10)
        tx.state["a"] = 2
        tx.commit(Change(Operation.SET, "a", 2), b"")

    write = asyncio.create_task(cache.write(S1, "", now_us(), slow_write))
    try:
        assert await asyncio.to_thread(in_apply.wait, 10)
        # The write holds the lock; a read sees the committed state (a WAL snapshot) and must not
        # keep it, as the write is about to replace it.
        assert await read(cache) == (1, {"a": 1}, {}, {})
    finally:
        release.set()
        await asyncio.wait_for(write, 10)
    assert await read(cache) == (2, {"a": 2}, {}, {})


async def test_a_cancelled_write_that_still_commits_leaves_no_stale_entry(cache: CachingStateStore) -> None:
    await cache.create_session(S1, None, {"a": 1}, False, now_us())
    in_apply, release = threading.Event(), threading.Event()

    def slow_write(tx: WriteTx) -> None:
        in_apply.set()
        assert release.wait(10)
        tx.state["a"] = 2
        tx.commit(Change(Operation.SET, "a", 2), b"")

    write = asyncio.create_task(cache.write(S1, "", now_us(), slow_write))
    assert await asyncio.to_thread(in_apply.wait, 10)
    write.cancel()  # what grpc.aio does to the handler when the client's deadline passes
    with pytest.raises(asyncio.CancelledError):
        await write
    try:
        assert await read(cache) == (1, {"a": 1}, {}, {})  # the write has not committed yet
    finally:
        release.set()
    # The database thread finishes the write regardless.
    for _ in range(200):
        if (await cache.inner.read_state(S1, now_us()))[1] == {"a": 2}:
            break
        await asyncio.sleep(0.01)
    assert (await cache.inner.read_state(S1, now_us()))[1] == {"a": 2}
    assert await read(cache) == (2, {"a": 2}, {}, {})


# -- TTL -----------------------------------------------------------------------------------------------------


async def test_a_cached_entry_expires_with_its_session(cache: CachingStateStore, spy: Spy) -> None:
    t = now_us()
    await cache.create_session(S1, 10, {"a": 1}, False, t)
    await cached_read(cache, spy, now=t)
    assert await read(cache, now=t + 10 * SECOND - 1) == (1, {"a": 1}, {}, {})
    with pytest.raises(SessionNotFound):
        await read(cache, now=t + 10 * SECOND)  # expires at exactly create + ttl
    with pytest.raises(SessionNotFound):
        await read(cache, now=t + 60 * SECOND)
    assert await cache.get_session(S1, t + 10 * SECOND) is None
    assert await cache.get_session(S1, t + 5 * SECOND) is not None


async def test_a_write_extends_the_ttl_of_a_cached_session(cache: CachingStateStore, spy: Spy) -> None:
    t = now_us()
    await cache.create_session(S1, 10, None, False, t)
    await cached_read(cache, spy, now=t)
    await cache.write(S1, "", t + 8 * SECOND, setter(a=1))
    await cached_read(cache, spy, now=t + 9 * SECOND)
    assert await read(cache, now=t + 15 * SECOND) == (1, {"a": 1}, {}, {})
    with pytest.raises(SessionNotFound):
        await read(cache, now=t + 18 * SECOND)


# -- bounds --------------------------------------------------------------------------------------------------


async def test_the_cache_holds_at_most_max_sessions_and_every_session_still_reads_right(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = await open_cache(tmp_path / "bounded.db", max_sessions=3)
    try:
        assert isinstance(cache.inner, SqlStateStore)
        spy = Spy(cache.inner, monkeypatch)
        keys = [SessionKey("app", "alice", f"s{i}") for i in range(5)]
        for i, key in enumerate(keys):
            await cache.create_session(key, None, {"i": i}, False, now_us())
        await cache.write(keys[0], "", now_us(), setter(user__shared=True, app__p=1))
        for _ in range(2):
            for i, key in enumerate(keys):
                version = 2 if i == 0 else 1
                assert await read(cache, key) == (version, {"i": i}, {"shared": True}, {"p": 1})
                assert len(cache._sessions) <= 3
        assert len(spy.calls) >= 5  # at least one database read per session
        assert len(cache._sessions) == 3
    finally:
        await cache.close()


async def test_the_least_recently_read_sessions_are_evicted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = await open_cache(tmp_path / "lru.db", max_sessions=3)
    try:
        assert isinstance(cache.inner, SqlStateStore)
        spy = Spy(cache.inner, monkeypatch)
        keys = [SessionKey("app", f"user{i}", "s") for i in range(5)]  # one user each
        for i, key in enumerate(keys):
            await cache.create_session(key, None, {"i": i}, False, now_us())
            await read(cache, key)
        spy.calls.clear()
        for key in keys[2:]:  # the three most recent: all cached
            assert (await read(cache, key))[1] == {"i": keys.index(key)}
        assert spy.calls == []
        assert (await read(cache, keys[0]))[1] == {"i": 0}  # evicted: read from the database
        assert spy.calls == [keys[0]]
    finally:
        await cache.close()


async def test_a_full_cache_still_serves_the_sessions_of_one_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = await open_cache(tmp_path / "one-user.db", max_sessions=3)
    try:
        assert isinstance(cache.inner, SqlStateStore)
        spy = Spy(cache.inner, monkeypatch)
        keys = [SessionKey("app", "alice", f"s{i}") for i in range(5)]
        for key in keys:
            await cache.create_session(key, None, None, False, now_us())
            await read(cache, key)
        spy.calls.clear()
        await read(cache, keys[-1])  # the session just read: cached
        assert spy.calls == []
    finally:
        await cache.close()


async def test_the_scope_entries_are_bounded_too(tmp_path: Path) -> None:
    cache = await open_cache(tmp_path / "apps.db", max_sessions=3)
    try:
        for i in range(6):
            key = SessionKey(f"app{i}", f"user{i}", "s")
            await cache.create_session(key, None, None, False, now_us())
            await read(cache, key)
        assert len(cache._users) <= 3
        assert len(cache._apps) <= 3
    finally:
        await cache.close()


# -- what is handed out --------------------------------------------------------------------------------------


async def test_changing_a_returned_state_does_not_change_the_cache(cache: CachingStateStore) -> None:
    await cache.create_session(S1, None, {"a": 1}, False, now_us())
    for _ in range(2):  # the filling read, then a cached one
        _, own, user, app = await cache.read_state(S1, now_us())
        own["a"] = "changed"
        user["u"] = "changed"
        app["p"] = "changed"
    assert await read(cache) == (1, {"a": 1}, {}, {})


# -- the premise: one process per SQLite file ----------------------------------------------------------------


async def test_a_second_exclusive_store_on_the_same_file_is_refused(tmp_path: Path) -> None:
    first = await open_cache(tmp_path / "state.db")
    try:
        second = SqlStateStore(f"sqlite:///{tmp_path / 'state.db'}", exclusive=True)
        with pytest.raises(DatabaseLocked):
            await second.start()
        await second.close()
    finally:
        await first.close()
    third = await open_cache(tmp_path / "state.db")  # the lock is released on close
    await third.close()
