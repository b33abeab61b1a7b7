"""Model-based test of an agent's conversation (issue 14, item 3): a hypothesis state machine chats with
agents of two sessions and appends other events, through the SDK against the real agent and state
services (the model a scripted OpenAI-compatible server), and checks against a plain model of
docs/AGENT.md:

- each turn appends the user's message, then the agent's answer, to the session's event log, in order;
  events added directly land in between as they were added;
- ``agent.history()`` is that agent's turns only (another agent of the same session, or the same name in
  another session, has its own);
- the prompt of each turn carries the agent's earlier turns, oldest first, then the new message."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from sessionkit import Session
from tests.fuzz.conftest import Services
from tests.fuzz.machines import run_machine
from tests.llm_server import Received, Reply

pytestmark = pytest.mark.slow

#: (session, agent): two agents in one session, and one of the same name in another session.
AGENTS = [("a", "alpha"), ("a", "beta"), ("b", "alpha")]


def _answer(request: Received) -> Reply:
    """An answer naming the message it answers, so the log shows which turn it belongs to."""
    users = [m for m in request.messages if m.get("role") == "user"]
    return Reply(content=f"answer to {users[-1]['content'] if users else '?'}")


class AgentMachine(RuleBasedStateMachine):
    services: Services

    @initialize()
    def start(self) -> None:
        user = f"agent-{uuid.uuid4().hex[:10]}"
        address = self.services.server.address
        self.sessions = {s: Session(session_id=s, user_id=user, address=address) for s in ("a", "b")}
        self.agents = {
            (s, name): self.sessions[s].Agent(name=name, instructions="Answer briefly.", memory=False)
            for s, name in AGENTS
        }
        self.log: dict[str, list[tuple[str, str]]] = {"a": [], "b": []}
        self.turns: dict[tuple[str, str], list[tuple[str, str]]] = {key: [] for key in AGENTS}
        self.counter = 0

    def teardown(self) -> None:
        for session in getattr(self, "sessions", {}).values():
            session.close()

    @rule(key=st.sampled_from(AGENTS))
    def chat(self, key: tuple[str, str]) -> None:
        self.counter += 1
        message = f"question {self.counter} for {key[1]}"
        answer = self.agents[key].chat(message)
        assert answer == f"answer to {message}"
        prompt = next(r for r in reversed(self.services.llm.chat_requests) if message in r.prompt)
        said = [(m["role"], m["content"]) for m in prompt.messages if m.get("role") in ("user", "assistant")]
        assert said == [*self.turns[key], ("user", message)], "the prompt's history is not the agent's turns"
        for event in (("user", message), ("assistant", answer)):
            self.turns[key].append(event)
            self.log[key[0]].append(event)

    @rule(session=st.sampled_from(["a", "b"]), role=st.sampled_from(["user", "system", "tool"]))
    def add_event(self, session: str, role: str) -> None:
        self.counter += 1
        content = f"note {self.counter}"
        self.sessions[session].add_event(role, content)
        self.log[session].append((role, content))

    @invariant()
    def reads_match(self) -> None:
        if not hasattr(self, "log"):
            return
        for session, expected in self.log.items():
            events = self.sessions[session].get_events()
            assert [(e.role, e.content) for e in events] == expected, session
        for key, turns in self.turns.items():
            history: list[dict[str, Any]] = self.agents[key].history()
            assert [(h["role"], h["content"]) for h in history] == turns, key


@pytest.fixture
def echoing_llm(services: Services) -> Iterator[None]:
    before = services.llm.fallback
    services.llm.fallback = _answer
    yield
    services.llm.fallback = before


def test_agent_history_matches_the_documented_model(services: Services, echoing_llm: None) -> None:
    AgentMachine.services = services
    run_machine(AgentMachine, "agent", sequences=3, steps=10)
