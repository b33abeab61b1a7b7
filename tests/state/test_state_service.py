"""StateService, the business layer: scopes, versions, atomic updates, limits, validation, history
and watch, over every store (the ``state_store`` fixture: SQLite, SQLite behind the read cache, and
PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from sessionkit.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SessionNotFound,
    StateConflict,
)
from sessionkit_server.state.limits import StateLimits
from sessionkit_server.state.service import ChangeView, StateService, session_key
from sessionkit_server.state.store import Operation, SessionKey, StateStore

HISTORY_LIMIT = 20  # what the state_store fixture configures
MAX_STATE = 2048
MAX_EVENT = 4096
S1 = SessionKey("app", "alice", "s1")
S2 = SessionKey("app", "alice", "s2")
BOB = SessionKey("app", "bob", "s1")


@pytest.fixture
async def service(state_store: StateStore) -> StateService:
    limits = StateLimits(max_state_bytes=MAX_STATE, max_event_bytes=MAX_EVENT, history_limit=HISTORY_LIMIT)
    svc = StateService(state_store, limits, poll_interval=0.05)
    for key in (S1, S2, BOB):
        await svc.create_session(key)
    return svc


async def snapshot(service: StateService, key: SessionKey = S1) -> tuple[dict[str, Any], int]:
    return await service.get_state(key)


# -- scopes ----------------------------------------------------------------------------------------------


async def test_get_state_merges_user_and_app_scopes_with_their_prefixes(service: StateService) -> None:
    await service.set_value(S1, "score", 1)
    await service.set_value(S1, "user:theme", "dark")
    await service.set_value(S1, "app:banner", "hi")

    assert await snapshot(service, S1) == ({"score": 1, "user:theme": "dark", "app:banner": "hi"}, 3)
    assert await snapshot(service, S2) == ({"user:theme": "dark", "app:banner": "hi"}, 0)
    assert await snapshot(service, BOB) == ({"app:banner": "hi"}, 0)
    assert await service.get_state(S1, ["score", "app:banner", "missing"]) == (
        {"score": 1, "app:banner": "hi"},
        3,
    )

    result = await service.delete_value(S2, "user:theme")
    assert result.existed is True and result.version == 1
    assert (await service.delete_value(S2, "user:theme")).existed is False
    assert await snapshot(service, S1) == ({"score": 1, "app:banner": "hi"}, 3)


async def test_temp_keys_are_refused_and_nothing_is_written(service: StateService) -> None:
    with pytest.raises(InvalidArgument) as info:
        await service.set_value(S1, "temp:scratch", 1)
    assert [v.field for v in info.value.violations] == ["key"]
    with pytest.raises(InvalidArgument) as info:
        await service.save_state(S1, {"a": 1, "temp:scratch": 1})
    assert [v.field for v in info.value.violations] == ["state.temp:scratch"]
    with pytest.raises(InvalidArgument):
        await service.increment(S1, "temp:n", 1)
    with pytest.raises(InvalidArgument):
        await service.create_session(SessionKey("app", "alice", "s9"), initial_state={"temp:x": 1})
    assert await snapshot(service) == ({}, 0)


async def test_save_state_replaces_own_keys_but_only_upserts_scoped_keys(service: StateService) -> None:
    await service.save_state(S1, {"a": 1, "b": 2, "user:x": 1, "user:y": 2, "app:p": 1, "app:q": 2})
    result = await service.save_state(S1, {"c": 3, "user:x": 10, "app:q": 20})
    assert result.version == 2
    assert await snapshot(service) == ({"c": 3, "user:x": 10, "user:y": 2, "app:p": 1, "app:q": 20}, 2)


async def test_save_state_deletes_scoped_keys_in_the_same_write(service: StateService) -> None:
    await service.save_state(S1, {"a": 1, "user:x": 1, "user:y": 2, "app:p": 1})
    result = await service.save_state(S1, {"b": 2, "user:y": 3}, 1, delete_keys=["user:x", "app:p"])
    assert result.version == 2  # one write: one version
    assert await snapshot(service) == ({"b": 2, "user:y": 3}, 2)
    assert await snapshot(service, S2) == ({"user:y": 3}, 0)
    # A stale save changes nothing: neither its keys nor its deletions.
    with pytest.raises(StateConflict):
        await service.save_state(S1, {"c": 3}, 1, delete_keys=["user:y"])
    assert await snapshot(service) == ({"b": 2, "user:y": 3}, 2)


@pytest.mark.parametrize(
    ("state", "delete_keys", "field"),
    [({}, ["plain"], "delete_keys[0]"), ({"user:x": 1}, ["app:p", "user:x"], "delete_keys[1]")],
)
async def test_save_state_refuses_delete_keys_it_cannot_honour(
    service: StateService, state: dict[str, Any], delete_keys: list[str], field: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        await service.save_state(S1, state, delete_keys=delete_keys)
    assert info.value.violations[0].field == field
    assert await snapshot(service) == ({}, 0)


async def test_clear_state_keeps_scopes_unless_asked(service: StateService) -> None:
    await service.save_state(S1, {"a": 1, "user:u": 1, "app:p": 1})
    await service.clear_state(S1)
    assert await snapshot(service) == ({"user:u": 1, "app:p": 1}, 2)
    await service.clear_state(S1, include_user_scope=True)
    assert await snapshot(service, S2) == ({"app:p": 1}, 0)
    await service.clear_state(S1, include_app_scope=True)
    assert await snapshot(service, BOB) == ({}, 0)


# -- versions and conflicts --------------------------------------------------------------------------------


WRITES: dict[str, Callable[[StateService, int], Awaitable[Any]]] = {
    "save": lambda s, v: s.save_state(S1, {"a": 9}, expected_version=v),
    "set": lambda s, v: s.set_value(S1, "a", 9, expected_version=v),
    "set_user": lambda s, v: s.set_value(S1, "user:a", 9, expected_version=v),
    "delete": lambda s, v: s.delete_value(S1, "a", expected_version=v),
    "clear": lambda s, v: s.clear_state(S1, expected_version=v),
    "increment": lambda s, v: s.increment(S1, "a", 1, expected_version=v),
    "append": lambda s, v: s.append(S1, "l", [1], expected_version=v),
    "restore": lambda s, v: s.restore_version(S1, 1, expected_version=v),
}


@pytest.mark.parametrize("operation", WRITES)
async def test_a_stale_expected_version_raises_state_conflict_and_writes_nothing(
    service: StateService, operation: str
) -> None:
    await service.set_value(S1, "a", 1)
    await service.set_value(S1, "l", [])
    with pytest.raises(StateConflict) as info:
        await WRITES[operation](service, 1)
    assert info.value.reason == "STATE_CONFLICT"
    assert info.value.metadata == {"current_version": "2", "expected_version": "1"}
    assert await snapshot(service) == ({"a": 1, "l": []}, 2)

    result = await WRITES[operation](service, 2)  # the current version: applied
    assert result.version == 3


async def test_every_write_bumps_the_version_including_scoped_keys(service: StateService) -> None:
    versions = [
        (await service.set_value(S1, "a", 1)).version,
        (await service.set_value(S1, "user:u", 1)).version,
        (await service.increment(S1, "app:n", 1)).version,
        (await service.append(S1, "user:l", ["x"])).version,
        (await service.delete_value(S1, "missing")).version,
        (await service.clear_state(S1)).version,
    ]
    assert versions == [1, 2, 3, 4, 5, 6]
    assert (await service.get_session(S1)).version == 6


async def test_a_replayed_write_returns_the_first_result_even_with_a_now_stale_expected_version(
    service: StateService,
) -> None:
    first = await service.increment(S1, "n", 5, expected_version=0, idempotency_key="retry-me")
    again = await service.increment(S1, "n", 5, expected_version=0, idempotency_key="retry-me")
    assert again == first
    assert first.value == 5 and first.version == 1
    assert await snapshot(service) == ({"n": 5}, 1)


KEYED_WRITES: dict[str, Callable[[StateService, str], Awaitable[Any]]] = {
    "save": lambda s, k: s.save_state(S1, {"a": 9}, idempotency_key=k),
    "set": lambda s, k: s.set_value(S1, "a", 9, idempotency_key=k),
    "set_user": lambda s, k: s.set_value(S1, "user:a", 9, idempotency_key=k),
    "delete": lambda s, k: s.delete_value(S1, "a", idempotency_key=k),
    "clear": lambda s, k: s.clear_state(S1, idempotency_key=k),
    "increment": lambda s, k: s.increment(S1, "a", 1, idempotency_key=k),
    "append": lambda s, k: s.append(S1, "l", [1], idempotency_key=k),
    "restore": lambda s, k: s.restore_version(S1, 1, idempotency_key=k),
}


@pytest.mark.parametrize("operation", KEYED_WRITES)
async def test_an_idempotency_key_reused_across_a_state_write_and_an_event_is_refused(
    service: StateService, operation: str
) -> None:
    await service.set_value(S1, "a", 1)
    await KEYED_WRITES[operation](service, "turn-1")
    state_after_write = await snapshot(service)

    # A state write's key used for an event: refused, no event stored.
    with pytest.raises(FailedPrecondition) as info:
        await service.append_event(S1, "user", "hi", idempotency_key="turn-1")
    assert info.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert await service.list_events(S1) == ([], "")

    # An event's key used for a state write: refused, nothing written.
    event = await service.append_event(S1, "user", "hi", idempotency_key="turn-2")
    with pytest.raises(FailedPrecondition) as info:
        await KEYED_WRITES[operation](service, "turn-2")
    assert info.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert await snapshot(service) == state_after_write

    # Each key still replays its own kind.
    assert (await KEYED_WRITES[operation](service, "turn-1")).version == 2
    assert await service.append_event(S1, "user", "hi", idempotency_key="turn-2") == event
    assert await service.list_events(S1) == ([event], "")
    assert await snapshot(service) == state_after_write


# -- increment and append -----------------------------------------------------------------------------------


async def test_increment_counts_a_missing_key_as_zero_and_keeps_ints_ints(service: StateService) -> None:
    result = await service.increment(S1, "n", 5)
    assert result.value == 5 and type(result.value) is int
    result = await service.increment(S1, "n", 1.0)  # a double on the wire, integral: stays an int
    assert result.value == 6 and type(result.value) is int
    result = await service.increment(S1, "n", -10)
    assert result.value == -4 and type(result.value) is int
    result = await service.increment(S1, "f", 2.5)
    assert result.value == 2.5
    assert (await service.increment(S1, "user:visits", 1)).value == 1
    assert (await service.increment(S2, "user:visits", 1)).value == 2
    state, version = await snapshot(service)
    assert state == {"n": -4, "f": 2.5, "user:visits": 2} and type(state["n"]) is int
    assert version == 5


@pytest.mark.parametrize("value", ["12", True, None, [1], {"n": 1}])
async def test_increment_of_a_non_number_fails_with_value_not_number(
    service: StateService, value: Any
) -> None:
    await service.set_value(S1, "n", value)
    with pytest.raises(FailedPrecondition) as info:
        await service.increment(S1, "n", 1)
    assert info.value.reason == "VALUE_NOT_NUMBER"
    assert info.value.metadata == {"key": "n"}
    assert await snapshot(service) == ({"n": value}, 1)


async def test_append_counts_a_missing_key_as_empty_and_refuses_non_lists(service: StateService) -> None:
    assert (await service.append(S1, "log", ["a"])).length == 1
    assert (await service.append(S1, "log", ["b", {"c": 1}, None])).length == 4
    assert (await service.append(S1, "app:log", [1, 2])).length == 2
    await service.set_value(S1, "text", "abc")
    with pytest.raises(FailedPrecondition) as info:
        await service.append(S1, "text", ["d"])
    assert info.value.reason == "VALUE_NOT_LIST"
    assert await snapshot(service) == (
        {"log": ["a", "b", {"c": 1}, None], "text": "abc", "app:log": [1, 2]},
        4,
    )


# -- limits --------------------------------------------------------------------------------------------------


WRITE_TOO_MUCH: dict[str, Callable[[StateService], Awaitable[Any]]] = {
    "set": lambda s: s.set_value(S1, "big", "x" * MAX_STATE),
    "set_multibyte": lambda s: s.set_value(S1, "big", "\u20ac" * 700),  # 700 characters, 2100 bytes
    "set_user": lambda s: s.set_value(S1, "user:big", "x" * MAX_STATE),
    "set_app": lambda s: s.set_value(S1, "app:big", "x" * MAX_STATE),
    "save": lambda s: s.save_state(S1, {"big": "x" * MAX_STATE}),
    "save_user": lambda s: s.save_state(S1, {"user:big": "x" * MAX_STATE}),
    "append": lambda s: s.append(S1, "small", ["x" * 1100, "y" * 1100]),
}


@pytest.mark.parametrize("operation", WRITE_TOO_MUCH)
async def test_oversize_state_is_refused_with_state_too_large_and_nothing_is_written(
    service: StateService, operation: str
) -> None:
    await service.save_state(S1, {"small": ["s"], "user:u": 1, "app:p": 1})
    before = await snapshot(service)
    with pytest.raises(ResourceExhausted) as info:
        await WRITE_TOO_MUCH[operation](service)
    assert info.value.reason == "STATE_TOO_LARGE"
    assert info.value.metadata["limit_bytes"] == str(MAX_STATE)
    assert int(info.value.metadata["size_bytes"]) > MAX_STATE
    assert await snapshot(service) == before


async def test_state_just_under_the_limit_is_accepted(service: StateService) -> None:
    overhead = len('{"big":""}')
    await service.set_value(S1, "big", "x" * (MAX_STATE - overhead))
    assert len((await snapshot(service))[0]["big"]) == MAX_STATE - overhead


async def test_oversize_initial_state_creates_no_session(service: StateService) -> None:
    key = SessionKey("app", "alice", "big")
    with pytest.raises(ResourceExhausted) as info:
        await service.create_session(key, initial_state={"big": "x" * MAX_STATE})
    assert info.value.reason == "STATE_TOO_LARGE"
    with pytest.raises(SessionNotFound):
        await service.get_session(key)


async def test_oversize_event_is_refused_with_event_too_large(service: StateService) -> None:
    with pytest.raises(ResourceExhausted) as info:
        await service.append_event(S1, "user", "x" * MAX_EVENT + "x")
    assert info.value.reason == "EVENT_TOO_LARGE"
    with pytest.raises(ResourceExhausted):  # metadata counts too
        await service.append_event(S1, "user", "x" * (MAX_EVENT - 10), metadata={"pad": "y" * 20})
    assert await service.list_events(S1) == ([], "")
    assert (await service.get_session(S1)).event_count == 0
    event = await service.append_event(S1, "user", "x" * (MAX_EVENT - 100))
    assert (await service.list_events(S1))[0] == [event]


# -- validation ----------------------------------------------------------------------------------------------


BAD_IDS = {"dotdot": "../../etc", "long": "a" * 10000, "nul": "a\x00b", "slash": "a/b", "dot": "."}


@pytest.mark.parametrize("field", ["app_name", "user_id", "session_id"])
@pytest.mark.parametrize("bad", BAD_IDS)
def test_session_key_refuses_bad_ids_naming_the_field(field: str, bad: str) -> None:
    ids = {"app_name": "app", "user_id": "alice", "session_id": "s1", field: BAD_IDS[bad]}
    with pytest.raises(InvalidArgument) as info:
        session_key(**ids)
    assert [v.field for v in info.value.violations] == [f"session.{field}"]
    assert len(str(info.value)) < 400  # a 10000-character id is not echoed back whole


def test_session_key_requires_a_session_id_and_defaults_app_and_user() -> None:
    with pytest.raises(InvalidArgument) as info:
        session_key("app", "alice", "")
    assert [v.field for v in info.value.violations] == ["session.session_id"]
    assert session_key("", "", "s1") == SessionKey("default", "default", "s1")
    generated = session_key("app", "alice", "", generate=True)
    assert generated.session_id and generated != session_key("app", "alice", "", generate=True)
    with pytest.raises(InvalidArgument) as info:
        session_key("../x", "a\x00", "")
    assert [v.field for v in info.value.violations] == [
        "session.app_name",
        "session.user_id",
        "session.session_id",
    ]


NOT_JSON: dict[str, tuple[Any, str]] = {
    "set": ({1, 2}, "value"),
    "bytes": (b"raw", "value"),
    "nan": (float("nan"), "value"),
    "inf": (float("inf"), "value"),
    "big_int": (2**60, "value"),
    "nested": ({"ok": [1, {"bad": {1}}]}, "value.ok[1].bad"),
    "int_key": ({1: "x"}, "value"),
}


@pytest.mark.parametrize("case", NOT_JSON)
async def test_non_json_values_are_refused_naming_the_path(service: StateService, case: str) -> None:
    value, path = NOT_JSON[case]
    with pytest.raises(InvalidArgument) as info:
        await service.set_value(S1, "k", value)
    assert [v.field for v in info.value.violations] == [path]
    with pytest.raises(InvalidArgument):
        await service.save_state(S1, {"k": value})
    with pytest.raises(InvalidArgument):
        await service.append(S1, "l", [value])
    assert await snapshot(service) == ({}, 0)


async def test_an_increment_past_exact_integers_is_refused(service: StateService) -> None:
    await service.set_value(S1, "n", 2**53)
    with pytest.raises(InvalidArgument):
        await service.increment(S1, "n", 1)
    assert await snapshot(service) == ({"n": 2**53}, 1)


async def test_operations_on_an_unknown_session_raise_session_not_found(service: StateService) -> None:
    ghost = SessionKey("app", "alice", "ghost")
    for call in (
        service.get_state(ghost),
        service.set_value(ghost, "a", 1),
        service.append_event(ghost, "user", "hi"),
        service.list_versions(ghost, 0, ""),
        service.list_events(ghost),
        service.restore_version(ghost, 1),
        service.delete_session(ghost),
    ):
        with pytest.raises(SessionNotFound):
            await call
    assert await service.delete_session(ghost, allow_missing=True) is False


# -- history -------------------------------------------------------------------------------------------------


async def test_restore_version_makes_an_earlier_state_current_as_a_new_version(service: StateService) -> None:
    await service.set_value(S1, "a", 1)
    await service.set_value(S1, "a", 2)
    await service.set_value(S1, "b", 3)
    await service.set_value(S1, "user:u", "kept")
    result = await service.restore_version(S1, 1)
    assert result.version == 5
    assert await snapshot(service) == ({"a": 1, "user:u": "kept"}, 5)
    newest = (await service.list_versions(S1, 1, ""))[0][0]
    assert (newest.version, newest.operation, newest.state) == (5, Operation.RESTORE, {"a": 1})


async def test_restore_of_a_version_no_longer_retained_is_not_found(service: StateService) -> None:
    for i in range(HISTORY_LIMIT + 3):
        await service.set_value(S1, "i", i)
    for version in (1, 3, 999):
        with pytest.raises(NotFound) as info:
            await service.restore_version(S1, version)
        assert info.value.reason == "VERSION_NOT_FOUND"
    assert (await service.get_session(S1)).version == HISTORY_LIMIT + 3
    assert (await service.restore_version(S1, 4)).version == HISTORY_LIMIT + 4
    assert await snapshot(service) == ({"i": 3}, HISTORY_LIMIT + 4)


async def test_list_versions_pages_newest_first_with_tokens(service: StateService) -> None:
    for i in range(7):
        await service.set_value(S1, "i", i)
    pages: list[list[int]] = []
    token = ""
    while True:
        versions, token = await service.list_versions(S1, 3, token)
        pages.append([v.version for v in versions])
        if not token:
            break
    assert pages == [[7, 6, 5], [4, 3, 2], [1]]
    assert [v.version for v in (await service.list_versions(S1, 0, ""))[0]] == [7, 6, 5, 4, 3, 2, 1]
    with pytest.raises(InvalidArgument) as info:
        await service.list_versions(S1, 3, "not a token!")
    assert [v.field for v in info.value.violations] == ["page_token"]
    with pytest.raises(InvalidArgument) as info:
        await service.list_versions(S1, 100_000, "")
    assert [v.field for v in info.value.violations] == ["page_size"]


async def test_list_sessions_and_events_page_with_tokens(service: StateService) -> None:
    for i in range(5):
        await service.create_session(SessionKey("app", "carol", f"c{i}"))
        await service.append_event(S1, "user", f"m{i}", author="bot" if i % 2 else "alice")
    sessions, token = await service.list_sessions("app", "carol", 2, "")
    names = [s.key.session_id for s in sessions]
    while token:
        sessions, token = await service.list_sessions("app", "carol", 2, token)
        names += [s.key.session_id for s in sessions]
    assert names == [f"c{i}" for i in range(5)]

    events, token = await service.list_events(S1, page_size=3)
    more, last = await service.list_events(S1, page_size=3, page_token=token)
    assert [e.content for e in events + more] == [f"m{i}" for i in range(5)] and last == ""
    assert [e.content for e in (await service.list_events(S1, tail=2))[0]] == ["m3", "m4"]
    assert [e.content for e in (await service.list_events(S1, author="bot"))[0]] == ["m1", "m3"]


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
