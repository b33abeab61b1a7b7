"""StateService, the business layer, over every store (the ``state_store`` fixture: SQLite, SQLite behind the
read cache, and PostgreSQL): user and app scopes, save and clear."""

from __future__ import annotations

from typing import Any

import pytest

from sessionkit.errors import InvalidArgument, StateConflict
from sessionkit_server.state.service import StateService
from sessionkit_server.state.store import SessionKey
from tests.state.service_support import BOB, S1, S2, snapshot

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
