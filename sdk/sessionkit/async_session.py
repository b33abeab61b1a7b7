"""AsyncSession: the Session API as coroutines. This is the one implementation; Session (sync) is
generated from it (sessionkit.session). Its behaviours live in one module each: session_core (identity,
transport, lifecycle), session_state (state and events), session_memory, session_knowledge; agents and
the remote agent's chat are here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, overload

from sessionkit import reasons
from sessionkit.agent import AsyncAgent
from sessionkit.errors import NotImplementedByServer
from sessionkit.session_core import check_memory_config, normalize_remote_url
from sessionkit.session_knowledge import KnowledgeMixin, SessionKnowledge
from sessionkit.session_memory import MemoryMixin, SessionMemory
from sessionkit.session_state import StateMixin

__all__ = ["AsyncSession", "SessionKnowledge", "SessionMemory", "check_memory_config", "normalize_remote_url"]


class AsyncSession(StateMixin, MemoryMixin, KnowledgeMixin):
    """A persistent session: state, an event log, memory, knowledge and agents.

    With no address configured the session talks to an embedded local server that keeps its data
    under ``storage_path`` (started on first use, shared by every process using that path). With
    ``address="host:port"`` (or ``SESSIONKIT_ADDRESS``) it talks to running services.

    ``auto_save=True`` (the default) writes each change through at once. With ``auto_save=False``,
    ``set_state``/``delete_state`` changes stay in this object (``get_state`` sees them) until
    ``save_state()`` writes them all in one atomic, version-checked write; ``restore_state()``
    returns the saved state. Keys prefixed ``temp:`` are never persisted: they live in this object.
    """

    @property
    def memory(self) -> SessionMemory:
        """This session's memory as one object (add, search, context, clear), e.g. for a workflow."""
        return SessionMemory(self)

    @property
    def knowledge(self) -> SessionKnowledge:
        """This session's knowledge as one object (add, search, list, delete, clear)."""
        return SessionKnowledge(self)

    async def get_context(self, query: str, max_items: int = 3) -> str:
        """Context for ``query``: up to ``max_items`` memories and up to ``max_items`` knowledge chunks,
        as one text block for a prompt ("" when there is nothing). A server without the knowledge
        service gives the memories alone."""
        parts: list[str] = []
        memory = await self.get_memory_context(query, max_items)
        if memory:
            parts.append(f"Memories:\n{memory}")
        try:
            hits = await self.search_knowledge(query, max_items)
        except NotImplementedByServer:
            hits = []
        if hits:
            lines = [f"- {h['text']} (source: {h['source']['name']})" for h in hits]
            parts.append("Knowledge:\n" + "\n".join(lines))
        return "\n\n".join(parts)

    # -- agents ---------------------------------------------------------------------------------------

    def Agent(
        self,
        name: str,
        role: str = "Assistant",
        instructions: str | None = None,
        tools: list[Any] | None = None,
        memory: bool = True,
        knowledge: list[str] | bool | None = None,
        llm: str | None = None,
        model: str | None = None,
        **kwargs: Any,
    ) -> AsyncAgent:
        """An agent bound to this session (stored with it on first use). ``tools``: Python functions
        (run in this process when the model calls them), built-in tool names ("search_memory",
        "search_knowledge", "get_state", "set_state") or tool dicts. ``knowledge``: file paths, URLs
        (added to the session) or source names the agent searches; ``llm``/``model``: the model name."""
        return AsyncAgent(
            self,
            self._agent_client(),
            name,
            role,
            instructions,
            tools,
            memory,
            knowledge,
            llm,
            model,
            **kwargs,
        )

    create_agent = Agent  # the seed's legacy name

    async def agents(self) -> list[AsyncAgent]:
        """The agents stored with this session (e.g. after restoring it in a new process)."""
        client = self._agent_client()
        stored = await self._run(lambda: client.list_agents(self._ref))
        return [AsyncAgent._from_stored(self, client, a) for a in stored]

    async def get_agent(self, name: str) -> AsyncAgent:
        """One stored agent by name (NotFound when there is none)."""
        client = self._agent_client()
        stored = await self._run(lambda: client.get_agent(self._ref, name))
        return AsyncAgent._from_stored(self, client, stored)

    # -- remote agent -------------------------------------------------------------------------------

    async def test_remote_connection(self) -> bool:
        """True when the remote agent's server answers its health check (``GET <base>/health`` is 200;
        ``<base>``: the agent URL without its last path segment). False when it is unreachable or
        unhealthy, and for a session that is not remote."""
        if self._remote is None:
            return False
        return await self._remote.health()

    @overload
    async def chat(self, message: str, *, stream: Literal[False] = False, **kwargs: Any) -> str: ...

    @overload
    async def chat(self, message: str, *, stream: Literal[True], **kwargs: Any) -> AsyncIterator[str]: ...

    async def chat(self, message: str, *, stream: bool = False, **kwargs: Any) -> str | AsyncIterator[str]:
        """Send ``message`` to the remote agent (the remote agent protocol, with this session's
        session_id and user_id as context) and return its answer. ``kwargs`` are added to the request
        body (e.g. ``agent="Researcher"``, ``options={...}``). Retried on connection failures,
        502/503/504 and 429; raises ``ConnectionError`` (:class:`RemoteConnectionError`) when the agent
        cannot be reached within ``timeout``, a typed error when it refuses the request.

        ``stream=True``: an async iterator of the reply's text pieces as the agent produces them
        (``async for piece in await session.chat("hi", stream=True)``)."""
        if self._remote is None:
            raise reasons.NOT_REMOTE.error()
        if stream:
            return self._remote.chat_stream(self.session_id, self.user_id, message, kwargs)
        answer = await self._remote.chat(self.session_id, self.user_id, message, kwargs)
        return str(answer["response"])

    @overload
    async def send_message(self, message: str, *, stream: Literal[False] = False, **kwargs: Any) -> str: ...

    @overload
    async def send_message(
        self, message: str, *, stream: Literal[True], **kwargs: Any
    ) -> AsyncIterator[str]: ...

    async def send_message(
        self, message: str, *, stream: bool = False, **kwargs: Any
    ) -> str | AsyncIterator[str]:
        """The ADK-style name of :meth:`chat`."""
        return await self.chat(message, stream=stream, **kwargs)  # type: ignore[call-overload,no-any-return]
