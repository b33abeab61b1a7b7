"""StateService, the business layer, over every store (the ``state_store`` fixture: SQLite, SQLite behind the
read cache, and PostgreSQL): history: restore and paging."""

from __future__ import annotations

import pytest

from sessionkit.errors import InvalidArgument, NotFound
from sessionkit_server.state.service import StateService
from sessionkit_server.state.store import Operation, SessionKey
from tests.state.service_support import HISTORY_LIMIT, S1, snapshot

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
