"""The Session SDK as users write it (the seed's examples), through a real gRPC server on SQLite and
PostgreSQL: state, scopes, auto_save, events, watch, history and typed errors."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from sessionkit import (
    AsyncSession,
    InvalidArgument,
    ResourceExhausted,
    Session,
    SessionNotFound,
    StateConflict,
)
from sessionkit.config import ClientSettings
from sessionkit.retry import RetryPolicy
from sessionkit.state_client import SessionRef, StateClient
from sessionkit.transport import Transport
from tests.servers import ServerThread


def test_seed_basic_state_management(server: ServerThread) -> None:
    session = Session(session_id="customer_support_123", address=server.address)
    session.save_state({"customer_name": "John Doe", "ticket_id": "SUP-456", "priority": "high"})
    state = session.restore_state()
    assert f"Handling ticket {state['ticket_id']} for {state['customer_name']}" == (
        "Handling ticket SUP-456 for John Doe"
    )
    assert state == {"customer_name": "John Doe", "ticket_id": "SUP-456", "priority": "high"}


def test_seed_state_management_patterns(server: ServerThread) -> None:
    session = Session(session_id="game_session", address=server.address)
    session.save_state({"score": 0, "level": 1, "inventory": []})
    session.set_state("score", session.get_state("score", 0) + 10)
    inventory = session.get_state("inventory", [])
    inventory.append("sword")
    session.set_state("inventory", inventory)
    assert session.restore_state() == {"score": 10, "level": 1, "inventory": ["sword"]}
    assert isinstance(session.get_state("score"), int)
    assert session.get_state("missing", "fallback") == "fallback"
    # The race-free forms.
    assert session.increment_state("score", 5) == 15
    assert session.increment_state("ratio", 0.5) == 0.5
    assert session.append_state("inventory", "shield", {"potion": 2}) == 3
    assert session.get_state("inventory") == ["sword", "shield", {"potion": 2}]


def test_session_restoration_in_a_new_object(server: ServerThread) -> None:
    Session(session_id="project_alpha", address=server.address).save_state(
        {"progress": 75, "phase": "testing"}
    )
    session2 = Session(session_id="project_alpha", address=server.address)
    state = session2.restore_state()
    assert f"Project progress: {state['progress']}%" == "Project progress: 75%"


def test_users_are_isolated_and_scopes_are_shared(server: ServerThread) -> None:
    a1 = Session("app_main", user_id="acme", address=server.address)
    a2 = Session("other", user_id="acme", address=server.address)
    b = Session("app_main", user_id="acme-corp", address=server.address)
    a1.set_state("theme", "dark")
    a1.set_state("user:language", "en")
    a1.set_state("app:banner", "hello")
    assert b.get_state("theme") is None  # same session id, other user: nothing shared
    assert b.get_state("user:language") is None
    assert a2.get_state("user:language") == "en"  # the user's scope spans their sessions
    assert a2.get_state("theme") is None
    assert b.get_state("app:banner") == "hello"  # the app scope spans users
    assert a1.restore_state() == {"theme": "dark", "user:language": "en", "app:banner": "hello"}


def test_temp_keys_are_never_persisted(server: ServerThread) -> None:
    session = Session("temp_s", address=server.address)
    session.set_state("temp:draft", "unsaved")
    session.save_state({"kept": 1, "temp:token": "abc"})
    assert session.get_state("temp:token") == "abc"
    assert session.restore_state() == {"kept": 1, "temp:token": "abc"}
    again = Session("temp_s", address=server.address)
    assert again.restore_state() == {"kept": 1}


def test_auto_save_false_keeps_changes_until_save_state(server: ServerThread) -> None:
    manual = Session("manual_session", auto_save=False, address=server.address)
    manual.save_state({"a": 1})
    manual.set_state("b", 2)
    manual.delete_state("a")
    assert manual.get_state("b") == 2  # this object sees its unsaved change
    other = Session("manual_session", address=server.address)
    assert other.restore_state() == {"a": 1}  # nobody else does, yet
    other.set_state("c", 3)  # a concurrent write is kept, not overwritten, by the flush
    manual.save_state()
    assert other.restore_state() == {"b": 2, "c": 3}


def test_save_state_with_scoped_deletions_is_one_write(server: ServerThread) -> None:
    setup = Session("manual_scoped", user_id="scoped_user", address=server.address)
    setup.save_state({"a": 1, "user:x": 1, "app:flag": True, "user:keep": 1})
    manual = Session("manual_scoped", user_id="scoped_user", auto_save=False, address=server.address)
    before = manual.state_version()
    manual.delete_state("user:x")
    manual.delete_state("app:flag")
    manual.set_state("user:y", 2)
    manual.set_state("b", 2)
    assert manual.save_state() == before + 1  # the writes and both deletions: one version
    assert manual.restore_state() == {"a": 1, "b": 2, "user:y": 2, "user:keep": 1}
    # Refused as a whole: a stale save leaves the deletion and the write undone.
    manual.delete_state("user:keep")
    manual.set_state("c", 3)
    with pytest.raises(StateConflict):
        manual.save_state(expected_version=before)
    assert setup.restore_state() == {"a": 1, "b": 2, "user:y": 2, "user:keep": 1}


def test_expected_version_refuses_stale_writes(server: ServerThread) -> None:
    session = Session("cas", address=server.address)
    version = session.save_state({"n": 1})
    assert session.set_state("n", 2, expected_version=version) == version + 1
    with pytest.raises(StateConflict) as info:
        session.set_state("n", 3, expected_version=version)
    assert info.value.metadata["current_version"] == str(version + 1)
    assert session.get_state("n") == 2


def test_events_history_and_versions(server: ServerThread) -> None:
    session = Session("chat", address=server.address)
    for i in range(5):
        session.add_event(
            "user" if i % 2 == 0 else "assistant", f"message {i}", author="bot" if i % 2 else ""
        )
    assert [e.content for e in session.get_events(2)] == ["message 3", "message 4"]
    assert len(session.get_events()) == 5
    assert [e.content for e in session.get_events(author="bot")] == ["message 1", "message 3"]
    v1 = session.save_state({"step": 1})
    session.save_state({"step": 2})
    history = session.state_history()
    assert [h.state for h in history[:2]] == [{"step": 2}, {"step": 1}]
    session.restore_state_version(v1)
    assert session.restore_state() == {"step": 1}
    assert session.info().event_count == 5


def test_watch_state_streams_changes(server: ServerThread) -> None:
    session = Session("watched", address=server.address)
    session.save_state({"x": 0})
    seen: list[tuple[str, str]] = []
    started = threading.Event()

    def watch() -> None:
        for change in Session("watched", address=server.address).watch_state():
            seen.append((change.operation, change.key))
            started.set()
            if len(seen) == 3:
                return

    thread = threading.Thread(target=watch)
    thread.start()
    assert started.wait(10)
    session.set_state("x", 1)
    session.increment_state("y")
    thread.join(10)
    assert seen == [("SNAPSHOT", ""), ("SET", "x"), ("INCREMENT", "y")]


def test_delete_then_reuse_starts_fresh(server: ServerThread) -> None:
    session = Session("short_lived", address=server.address)
    session.set_state("a", 1)
    assert session.delete() is True
    assert session.restore_state() == {}


@pytest.mark.parametrize("bad", ["../../etc", "", "a" * 10_000, "a\x00b", "x/y"])
def test_bad_ids_are_refused_before_anything_is_written(server: ServerThread, bad: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        Session(session_id=bad, address=server.address)
    assert "session_id" in str(info.value)
    with pytest.raises(InvalidArgument):
        Session("fine", user_id=bad, address=server.address)


@pytest.mark.parametrize("value", [{1, 2}, b"bytes", float("nan"), 2**60, object()])
def test_non_json_values_are_refused_and_nothing_is_written(server: ServerThread, value: object) -> None:
    session = Session("json_only", address=server.address)
    session.save_state({"before": True})
    with pytest.raises(InvalidArgument):
        session.set_state("bad", value)
    with pytest.raises(InvalidArgument):
        session.save_state({"bad": value})
    assert session.restore_state() == {"before": True}


def test_oversize_state_is_refused_and_nothing_is_written(server: ServerThread) -> None:
    session = Session("big", address=server.address)
    session.save_state({"small": 1})
    with pytest.raises(ResourceExhausted) as info:
        session.save_state({"huge": "x" * (2 << 20)})
    assert info.value.reason == "STATE_TOO_LARGE"
    with pytest.raises(ResourceExhausted):
        session.set_state("huge", "y" * (1 << 20))
    assert session.restore_state() == {"small": 1}


async def test_unknown_session_is_typed_not_found(server: ServerThread) -> None:
    client = StateClient(Transport(ClientSettings(), server.address, Path("."), RetryPolicy()))
    with pytest.raises(SessionNotFound) as info:
        await client.get_state(SessionRef("default", "default", "never-created"))
    assert info.value.metadata["session_id"] == "never-created"


async def test_async_session_has_the_same_api(server: ServerThread) -> None:
    session = AsyncSession("async_s", user_id="u1", address=server.address)
    await session.save_state({"a": 1})
    await session.set_state("b", [1, 2])
    assert await session.increment_state("a", 2) == 3
    assert await session.restore_state() == {"a": 3, "b": [1, 2]}
    assert (await session.add_event("user", "hi")).content == "hi"
    assert [e.content for e in await session.get_events(1)] == ["hi"]


async def test_concurrent_increments_from_eight_clients_sum_exactly(server: ServerThread) -> None:
    clients = [AsyncSession("counter", address=server.address) for _ in range(8)]

    async def bump(session: AsyncSession) -> None:
        for _ in range(200):
            await session.increment_state("n")

    await asyncio.gather(*(bump(c) for c in clients))
    assert await clients[0].get_state("n") == 1600
