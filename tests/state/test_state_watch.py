"""StateService, the business layer, over every store (the ``state_store`` fixture: SQLite, SQLite behind the
read cache, and PostgreSQL): watch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from sessionkit.errors import SessionNotFound
from sessionkit_server.state.service import ChangeView, StateService
from sessionkit_server.state.store import Operation
from tests.state.service_support import BOB, HISTORY_LIMIT, S1, S2, snapshot

# -- watch ---------------------------------------------------------------------------------------------------


async def collect(stream: AsyncIterator[ChangeView], into: asyncio.Queue[ChangeView]) -> None:
    async for change in stream:
        await into.put(change)


async def test_watch_sends_a_snapshot_then_every_write_in_order(service: StateService) -> None:
    await service.save_state(S1, {"a": 1, "user:u": 1})
    queue: asyncio.Queue[ChangeView] = asyncio.Queue()
    task = asyncio.create_task(collect(service.watch(S1), queue))
    try:
        first = await asyncio.wait_for(queue.get(), 5)
        assert (first.operation, first.version, first.state) == (Operation.SNAPSHOT, 1, {"a": 1, "user:u": 1})

        await service.set_value(S1, "b", 2)
        await service.increment(S1, "n", 3)
        await service.delete_value(S1, "a")
        changes = [await asyncio.wait_for(queue.get(), 5) for _ in range(3)]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert [(c.version, c.operation, c.key, c.value) for c in changes] == [
        (2, Operation.SET, "b", 2),
        (3, Operation.INCREMENT, "n", 3),
        (4, Operation.DELETE, "a", None),
    ]
    assert changes[-1].state == {"b": 2, "n": 3}
    assert queue.empty()


async def test_watch_since_version_replays_retained_changes(service: StateService) -> None:
    for i in range(1, 4):
        await service.set_value(S1, "i", i)
    stream = service.watch(S1, since_version=1)
    try:
        items = [await asyncio.wait_for(anext(stream), 5) for _ in range(3)]
    finally:
        await stream.aclose()
    assert [(c.operation, c.version) for c in items] == [
        (Operation.SNAPSHOT, 3),
        (Operation.SET, 2),
        (Operation.SET, 3),
    ]


async def test_a_watcher_that_falls_behind_the_history_gets_a_fresh_snapshot(service: StateService) -> None:
    stream = service.watch(S1)
    try:
        first = await asyncio.wait_for(anext(stream), 5)
        assert (first.operation, first.version) == (Operation.SNAPSHOT, 0)
        for i in range(HISTORY_LIMIT + 5):  # versions 1-5 leave the history before the watcher reads
            await service.set_value(S1, "i", i)
        resync = await asyncio.wait_for(anext(stream), 5)
        assert (resync.operation, resync.version, resync.state) == (
            Operation.SNAPSHOT,
            HISTORY_LIMIT + 5,
            {"i": HISTORY_LIMIT + 4},
        )
        await service.set_value(S1, "j", 1)
        live = await asyncio.wait_for(anext(stream), 5)
        assert (live.operation, live.version, live.key) == (Operation.SET, HISTORY_LIMIT + 6, "j")
    finally:
        await stream.aclose()


async def test_a_watcher_that_is_behind_but_within_the_history_gets_every_change(
    service: StateService,
) -> None:
    stream = service.watch(S1)
    try:
        await asyncio.wait_for(anext(stream), 5)
        for i in range(HISTORY_LIMIT - 1):
            await service.set_value(S1, "i", i)
        items = [await asyncio.wait_for(anext(stream), 5) for _ in range(HISTORY_LIMIT - 1)]
    finally:
        await stream.aclose()
    assert [c.version for c in items] == list(range(1, HISTORY_LIMIT))
    assert all(c.operation == Operation.SET for c in items)


async def test_watch_ends_with_not_found_when_the_session_is_deleted(service: StateService) -> None:
    stream = service.watch(S1)
    try:
        await asyncio.wait_for(anext(stream), 5)
        await service.delete_session(S1)
        with pytest.raises(SessionNotFound):
            await asyncio.wait_for(anext(stream), 5)
    finally:
        await stream.aclose()


async def test_watch_state_is_merged_in_snapshots_and_the_sessions_own_keys_in_changes(
    service: StateService,
) -> None:
    """As documented on StateChange.state: SNAPSHOT carries the merged state; every other change
    the session's own keys, a user:/app: write its key and value; scoped keys changed through
    other sessions are not streamed."""
    await service.save_state(S1, {"a": 0, "user:theme": "dark", "app:banner": "hi"})
    queue: asyncio.Queue[ChangeView] = asyncio.Queue()
    task = asyncio.create_task(collect(service.watch(S1), queue))
    try:
        first = await asyncio.wait_for(queue.get(), 5)
        assert (first.operation, first.version, first.key, first.value) == (Operation.SNAPSHOT, 1, "", None)
        assert first.state == {"a": 0, "user:theme": "dark", "app:banner": "hi"}

        await service.set_value(S1, "a", 1)
        await service.set_value(S1, "user:theme", "light")
        await service.increment(S1, "app:visits", 2)
        await service.set_value(S2, "user:theme", "blue")  # through another session: not streamed
        await service.set_value(BOB, "app:banner", "bye")  # through another user: not streamed
        await service.delete_value(S1, "user:theme")
        await service.append(S1, "user:log", ["x"])
        changes = [await asyncio.wait_for(queue.get(), 5) for _ in range(5)]
        await asyncio.sleep(3 * service.poll_interval)
        assert queue.empty()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert [(c.version, c.operation, c.key, c.value, c.state) for c in changes] == [
        (2, Operation.SET, "a", 1, {"a": 1}),
        (3, Operation.SET, "user:theme", "light", {"a": 1}),
        (4, Operation.INCREMENT, "app:visits", 2, {"a": 1}),
        (5, Operation.DELETE, "user:theme", None, {"a": 1}),
        (6, Operation.APPEND, "user:log", ["x"], {"a": 1}),
    ]
    # The merged state is a GetState away.
    assert await snapshot(service) == ({"a": 1, "user:log": ["x"], "app:banner": "bye", "app:visits": 2}, 6)


async def test_watch_ends_with_not_found_when_the_session_is_deleted_and_created_again(
    service: StateService,
) -> None:
    await service.set_value(S1, "a", 1)
    queue: asyncio.Queue[ChangeView] = asyncio.Queue()
    task = asyncio.create_task(collect(service.watch(S1), queue))
    try:
        first = await asyncio.wait_for(queue.get(), 5)
        assert (first.operation, first.version) == (Operation.SNAPSHOT, 1)
        await asyncio.sleep(2 * service.poll_interval)  # the watcher is waiting for changes
        await service.delete_session(S1)
        await service.create_session(S1)  # same id, right away: another session
        with pytest.raises(SessionNotFound):
            await asyncio.wait_for(task, 5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, SessionNotFound):
            await task
    assert queue.empty()


async def test_a_recreated_session_is_noticed_by_polling_when_another_replica_recreates_it(
    service: StateService,
) -> None:
    """Another replica (its own StateService, so no in-process notification) deletes and recreates
    the session: the watcher notices within its poll interval."""
    other_replica = StateService(service.store, service.limits, poll_interval=0.05)
    queue: asyncio.Queue[ChangeView] = asyncio.Queue()
    task = asyncio.create_task(collect(service.watch(S1), queue))
    try:
        await asyncio.wait_for(queue.get(), 5)
        await other_replica.delete_session(S1)
        await other_replica.create_session(S1)
        with pytest.raises(SessionNotFound):
            await asyncio.wait_for(task, 5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, SessionNotFound):
            await task
    assert queue.empty()


async def test_a_suspended_watcher_never_streams_a_recreated_sessions_history(service: StateService) -> None:
    stream = service.watch(S1)
    try:
        first = await asyncio.wait_for(anext(stream), 5)
        assert (first.operation, first.version) == (Operation.SNAPSHOT, 0)
        # The watcher is suspended at its yield (a slow consumer) while the session is replaced.
        await service.delete_session(S1)
        await service.create_session(S1, initial_state={"other": "session"})
        await service.set_value(S1, "b", 2)
        with pytest.raises(SessionNotFound):
            change = await asyncio.wait_for(anext(stream), 5)
            raise AssertionError(f"streamed {change} of the recreated session")
    finally:
        await stream.aclose()
