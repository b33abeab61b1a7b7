"""What a turn reads before its prompt (sessionkit_server.agent.turn_context), against a real server with
every service and the scripted LLM server: the history is read while memory and knowledge are searched,
and a failing search still leaves the user's message in the event log.

The server's own upstream clients are real; the test only wraps their calls to slow the event log down
and to note when each read starts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sessionkit import FailedPrecondition, Session
from sessionkit_server.server import Host
from tests.agent.support import settings
from tests.llm_server import LLMServer, llm_server_fixture  # noqa: F401 - fixture
from tests.servers import ServerThread

SLOW = 0.5


def wrap(client: Any, name: str, before: Callable[[], Any]) -> None:
    """Run ``await before()`` ahead of each call of ``client.name``."""
    real = getattr(client, name)

    async def call(*args: Any, **kwargs: Any) -> Any:
        await before()
        return await real(*args, **kwargs)

    setattr(client, name, call)


@pytest.fixture
def marks() -> dict[str, float]:
    return {}


def slow_event_log(marks: dict[str, float], memory_error: Exception | None = None) -> Callable[[Host], None]:
    def customize(host: Host) -> None:
        assert host.agent is not None
        up = host.agent.turns.upstreams.current()  # the clients of calls made without an API key

        async def history() -> None:
            await asyncio.sleep(SLOW)  # a slow event log
            marks["history_read"] = time.monotonic()

        async def memory() -> None:
            marks["memory_search"] = time.monotonic()
            if memory_error is not None:
                raise memory_error

        async def knowledge() -> None:
            marks["knowledge_search"] = time.monotonic()

        wrap(up.state, "list_events", history)
        wrap(up.memory, "search", memory)
        wrap(up.knowledge, "search", knowledge)

    return customize


@pytest.fixture
def server(tmp_path: Path, llm_server: LLMServer, marks: dict[str, float]) -> Iterator[ServerThread]:
    thread = ServerThread(settings(tmp_path, llm_server.base_url), customize=slow_event_log(marks)).start()
    yield thread
    thread.stop()


def test_history_is_read_while_memory_and_knowledge_are_searched(
    server: ServerThread, llm_server: LLMServer, marks: dict[str, float]
) -> None:
    s = Session("ctx-1", "alice", address=server.address)
    agent = s.Agent(name="Reader", memory_write="none")
    llm_server.script("Hi Alice.", "You said hello.")
    assert agent.chat("hello") == "Hi Alice."
    assert agent.chat("what did I say?") == "You said hello."

    # Both searches started while the (slow) history read was still under way.
    assert marks["memory_search"] < marks["history_read"] - SLOW / 2
    assert marks["knowledge_search"] < marks["history_read"] - SLOW / 2
    meta = agent.last_metadata
    assert meta["latency"]["history_ms"] >= SLOW * 1000
    # The history is still what was said before the new message, and the message is logged once.
    second = llm_server.chat_requests[1]
    assert [(m["role"], m["content"]) for m in second.messages[1:]] == [
        ("user", "hello"),
        ("assistant", "Hi Alice."),
        ("user", "what did I say?"),
    ]
    assert [e.content for e in s.get_events()] == ["hello", "Hi Alice.", "what did I say?", "You said hello."]


def test_a_failing_search_still_leaves_the_message_logged(
    tmp_path: Path, llm_server: LLMServer, marks: dict[str, float]
) -> None:
    down = FailedPrecondition("memory is down")
    customize = slow_event_log(marks, memory_error=down)
    thread = ServerThread(settings(tmp_path, llm_server.base_url), customize=customize).start()
    try:
        s = Session("ctx-2", "alice", address=thread.address)
        agent = s.Agent(name="Reader")
        with pytest.raises(FailedPrecondition, match="memory is down"):
            agent.chat("are you there?")
        # The search failed at once, but the turn ended only after the slow history read and the
        # append of the user's message: nothing of the turn runs on after its error.
        assert [(e.role, e.content) for e in s.get_events()] == [("user", "are you there?")]
        assert llm_server.chat_requests == []
    finally:
        thread.stop()
