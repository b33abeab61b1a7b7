"""The agent service's business layer, assembled: one object per job, on the agent's own records
(sessionkit_server.agent.records); the gRPC servicer converts messages and calls them.

- ``agents``  (definitions.py): create, get, list and delete the agents of a session;
- ``turns``   (turns.py): the turn pipeline; what it reads before the prompt is in turn_context.py, the
  LLM and tool rounds in tool_rounds.py, the prompt in prompt.py;
- ``leases``  (conversations.py): one turn at a time per session, across replicas;
- ``workflows`` (workflows.py): sequential multi-agent tasks.

It talks to the state, memory and knowledge services through the SDK's clients, over gRPC, like any
other caller (upstream.py), and to the LLM through sessionkit_server.agent.llm."""

from __future__ import annotations

from collections.abc import Callable

from sessionkit_server.agent.conversations import ConversationLeases
from sessionkit_server.agent.definitions import AgentDefinitions
from sessionkit_server.agent.settings import AgentSettings
from sessionkit_server.agent.store import AgentStore
from sessionkit_server.agent.turns import Turns
from sessionkit_server.agent.upstream import LLMRouter, Upstream, Upstreams
from sessionkit_server.agent.workflows import Workflows

__all__ = ["AgentService", "AgentSettings", "Upstream"]


class AgentService:
    def __init__(
        self,
        store: AgentStore,
        upstream: Upstream | Callable[[str | None], Upstream],
        llm: LLMRouter,
        settings: AgentSettings | None = None,
    ) -> None:
        """``upstream``: the clients of the other services, or a function making them for a caller's
        API key (the agent calls them on the caller's behalf, with the caller's key)."""
        self.store = store
        self.llm = llm
        self.settings = settings or AgentSettings()
        upstreams = Upstreams(upstream)
        self.agents = AgentDefinitions(store, upstreams, llm, self.settings)
        self.leases = ConversationLeases(store, self.settings)
        self.turns = Turns(self.agents, self.leases, upstreams, llm, self.settings)
        self.workflows = Workflows(self.agents, self.leases, self.turns, self.settings)

    async def start(self) -> None:
        await self.store.start()

    async def close(self) -> None:
        await self.turns.drain()
        close = getattr(self.llm, "close", None)
        if close is not None:
            await close()
