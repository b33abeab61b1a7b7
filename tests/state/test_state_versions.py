"""StateService, the business layer, over every store (the ``state_store`` fixture: SQLite, SQLite behind the
read cache, and PostgreSQL): versions, conflicts, replays, increment and append."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sessionkit.errors import FailedPrecondition, StateConflict
from sessionkit_server.state.service import StateService
from tests.state.service_support import S1, S2, snapshot

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
