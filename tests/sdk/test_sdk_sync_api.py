"""The sync API is the async API by construction: Session is generated from AsyncSession (and the sync
Agent, Workflow, session.memory and session.knowledge from theirs), so they have the same public members
with the same parameters; the generated methods run for real against a server, streams included."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessionkit import Agent, AsyncAgent, AsyncSession, AsyncWorkflow, Session, Workflow, _stubgen
from sessionkit._sync import SyncFacade, differences, public_members, sync_of
from sessionkit.async_session import SessionKnowledge, SessionMemory
from sessionkit.session import SyncSessionKnowledge, SyncSessionMemory
from tests.servers import ServerThread

PAIRS: list[tuple[type, type, bool]] = [
    (Session, AsyncSession, True),
    (Agent, AsyncAgent, False),
    (Workflow, AsyncWorkflow, True),
    (SyncSessionMemory, SessionMemory, False),
    (SyncSessionKnowledge, SessionKnowledge, False),
]


@pytest.mark.parametrize(
    ("sync_cls", "async_cls", "constructor"), PAIRS, ids=lambda p: getattr(p, "__name__", "")
)
def test_sync_and_async_classes_have_the_same_api(sync_cls: type, async_cls: type, constructor: bool) -> None:
    assert differences(sync_cls, async_cls, constructor=constructor) == []
    for name in public_members(async_cls):
        member = inspect.getattr_static(async_cls, name)
        if callable(member):
            assert getattr(sync_cls, name).__doc__ == member.__doc__, name


def test_the_members_that_had_drifted_are_there() -> None:
    for name in ("iter_events", "is_embedded", "memory_enabled", "memory_provider", "watch_state"):
        assert name in public_members(Session), name
    # Async iterators come back as blocking iterators: the signatures say so.
    assert inspect.signature(Session.iter_events).return_annotation == "Iterator[Event]"
    assert inspect.signature(Agent.stream).return_annotation == "Iterator[str]"


def test_instance_attributes_read_and_write_through(tmp_path: Path) -> None:
    session = Session("attrs", storage_path=tmp_path, memory_config={"provider": "none"}, timeout=7)
    inner = AsyncSession("attrs", storage_path=tmp_path, memory_config={"provider": "none"}, timeout=7)
    for name in [n for n in vars(inner) if not n.startswith("_")]:
        assert getattr(session, name) == getattr(inner, name), name
    assert session.is_embedded and not session.memory_enabled and session.memory_provider == "none"
    assert isinstance(session.memory, SyncSessionMemory)
    session.auto_save = False
    assert session._async.auto_save is False
    assert repr(session).startswith("Session(session_id='attrs'")


def test_a_drifted_hand_written_class_is_reported() -> None:
    class Drifted:
        def save_state(self, data: dict[str, Any]) -> int:  # lost expected_version
            return 0

        @property
        def restore_state(self) -> dict[str, Any]:  # a method made a property
            return {}

    problems = differences(Drifted, AsyncSession)
    assert any(p.startswith("save_state: parameters") for p in problems)
    assert "restore_state: a property on one side only" in problems
    assert "iter_events: missing from Drifted" in problems


def test_a_new_async_method_appears_on_the_sync_side_by_itself(tmp_path: Path) -> None:
    class Extended(AsyncSession):
        async def shout(self, text: str, *, times: int = 2) -> str:
            """Louder."""
            return " ".join([text.upper()] * times)

        async def count(self, n: int) -> Any:
            for i in range(n):
                yield i

    @sync_of(Extended, construct=True)
    class SyncExtended(SyncFacade[Extended]):
        pass

    assert differences(SyncExtended, Extended, constructor=True) == []
    session: Any = SyncExtended("ext", storage_path=tmp_path)
    assert session.shout("hi", times=3) == "HI HI HI"
    assert SyncExtended.shout.__doc__ == "Louder."
    counted = session.count(3)
    assert isinstance(counted, Iterator) and list(counted) == [0, 1, 2]


def test_generated_methods_work_against_a_server(server: ServerThread) -> None:
    with Session("sync_generated", address=server.address) as session:
        session.save_state({"a": 1})
        for n in range(3):
            session.add_event("user", f"m{n}")
        events = session.iter_events(page_size=2)
        assert isinstance(events, Iterator)
        assert [e.content for e in events] == ["m0", "m1", "m2"]
        changes = session.watch_state()
        assert next(changes).state == {"a": 1}
        changes.close()  # type: ignore[attr-defined]
        assert session.state_version() == 1


@pytest.mark.parametrize("name", sorted(_stubgen.STUBS))
def test_the_type_stubs_are_written_from_the_async_api(name: str) -> None:
    """session.pyi and agent_sync.pyi (what type checkers read) are what _stubgen writes today:
    regenerate them with ``python -m sessionkit._stubgen`` after changing the async API."""
    written = (Path(_stubgen.__file__).parent / name).read_text()
    fresh = _stubgen.STUBS[name]()
    assert ast.dump(ast.parse(written)) == ast.dump(ast.parse(fresh)), f"{name} is stale"
    if name == "session.pyi":
        assert "def iter_events(self, *, author: str = ..., page_size: int = ...) -> Iterator[Event]" in fresh
