"""StateService, the business layer, over every store (the ``state_store`` fixture: SQLite, SQLite behind the
read cache, and PostgreSQL): size limits and validation of ids, values and sessions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sessionkit.errors import InvalidArgument, ResourceExhausted, SessionNotFound
from sessionkit_server.state.service import StateService, session_key
from sessionkit_server.state.store import SessionKey
from tests.state.service_support import MAX_EVENT, MAX_STATE, S1, snapshot

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
