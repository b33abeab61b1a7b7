"""Agent definitions: create, get, list and delete the agents of a session.

An agent is defined within one session, under a name unique in it, and stored with the session's create
time, so a session deleted and created again under the same id does not inherit the old one's agents.
Every call first resolves the session through the state service (SESSION_NOT_FOUND when it does not
exist)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sessionkit import reasons
from sessionkit.errors import FieldViolation, InvalidArgument, NotFound
from sessionkit.state_client import SessionRef
from sessionkit_server.agent.convert import definition_bytes, definition_from_bytes
from sessionkit_server.agent.records import AgentDefinition, IfExists
from sessionkit_server.agent.settings import AgentSettings
from sessionkit_server.agent.store import AgentRow, AgentStore, Conversation
from sessionkit_server.agent.tools import check_tools
from sessionkit_server.agent.upstream import LLMRouter, Upstreams
from sessionkit_server.common.identity import session_key
from sessionkit_server.common.paging import page_size, page_token, read_token
from sessionkit_server.common.timestamps import now_us

#: Agent names: printable, no leading/trailing spaces.
MAX_NAME = 128


def check_agent_name(name: str, field_name: str = "agent.name") -> str:
    if (
        not name
        or len(name) > MAX_NAME
        or name != name.strip()
        or any(ord(ch) < 32 or ord(ch) == 127 for ch in name)
    ):
        raise InvalidArgument(
            f"invalid agent name {name[:40]!r}",
            violations=[
                FieldViolation(
                    field_name, "1 to 128 characters, no control characters, no leading or trailing spaces"
                )
            ],
        )
    return name


@dataclass(frozen=True)
class OpenSession:
    """A session that exists: its validated reference, its conversation key and its create time."""

    ref: SessionRef
    conversation: Conversation
    create_us: int


def _not_found(conv: Conversation, name: str) -> NotFound:
    return reasons.AGENT_NOT_FOUND.error(session_id=conv.session_id, name=name, metadata={"agent_name": name})


class AgentDefinitions:
    def __init__(
        self, store: AgentStore, upstreams: Upstreams, llm: LLMRouter, settings: AgentSettings
    ) -> None:
        self.store = store
        self.upstreams = upstreams
        self.llm = llm
        self.settings = settings

    async def open_session(self, ref: SessionRef) -> OpenSession:
        key = session_key(ref.app_name, ref.user_id, ref.session_id)
        sref = SessionRef(key.app_name, key.user_id, key.session_id)
        info = await self.upstreams.current().state.get_session(sref)  # SessionNotFound when missing
        created = int(info.create_time.timestamp() * 1_000_000) if info.create_time else 0
        return OpenSession(sref, Conversation(key.app_name, key.user_id, key.session_id), created)

    def validate(self, agent: AgentDefinition) -> AgentDefinition:
        """The definition as stored: checked, built-in tools filled in, no session or times."""
        check_agent_name(agent.name)
        violations = []
        if agent.temperature is not None and not 0 <= agent.temperature <= 2:
            violations.append(FieldViolation("agent.temperature", "must be between 0 and 2"))
        if agent.max_tokens < 0:
            violations.append(FieldViolation("agent.max_tokens", "must not be negative"))
        for name in ("memory_max_items", "knowledge_max_items"):
            if not 0 <= getattr(agent, name) <= 100:
                violations.append(FieldViolation(f"agent.{name}", "must be between 0 and 100"))
        if not 0 <= agent.history_max_events <= 1000:
            violations.append(FieldViolation("agent.history_max_events", "must be between 0 and 1000"))
        if not 0 <= agent.max_tool_rounds <= 32:
            violations.append(FieldViolation("agent.max_tool_rounds", "must be between 0 and 32"))
        if violations:
            raise InvalidArgument("invalid agent definition", violations=violations)
        tools = check_tools(agent.tools, "agent.tools")
        self.llm.check(agent.model)
        return dataclasses.replace(agent, tools=tools, session=None, create_us=0, update_us=0)

    def _loaded(self, session: OpenSession, row: AgentRow) -> AgentDefinition:
        agent = definition_from_bytes(row.definition)
        agent.session, agent.create_us, agent.update_us = session.ref, row.create_us, row.update_us
        return agent

    async def create(
        self, ref: SessionRef, agent: AgentDefinition, if_exists: IfExists
    ) -> tuple[AgentDefinition, bool]:
        stored = self.validate(agent)
        session = await self.open_session(ref)
        conv, limit = session.conversation, self.settings.max_agents_per_session
        mode = {IfExists.REPLACE: "replace", IfExists.GET: "get"}.get(if_exists, "fail")
        existing = await self.store.list_agents(conv, session.create_us, "", limit + 1)
        if len(existing) >= limit and all(a.name != agent.name for a in existing):
            raise reasons.AGENT_LIMIT.error(session_id=conv.session_id, count=len(existing), limit=limit)
        row, created = await self.store.put_agent(
            conv, agent.name, definition_bytes(stored), session.create_us, mode, now_us()
        )
        if not created and mode == "fail":
            raise reasons.AGENT_EXISTS.error(
                session_id=conv.session_id, name=agent.name, metadata={"agent_name": agent.name}
            )
        return self._loaded(session, row), created

    async def get(self, ref: SessionRef, name: str) -> AgentDefinition:
        return await self.find(await self.open_session(ref), name)

    async def find(self, session: OpenSession, name: str) -> AgentDefinition:
        """The agent ``name`` of a session already opened (AGENT_NOT_FOUND when it has none)."""
        row = await self.store.get_agent(session.conversation, name, session.create_us)
        if row is None:
            raise _not_found(session.conversation, name)
        return self._loaded(session, row)

    async def list_page(self, ref: SessionRef, size: int, token: str) -> tuple[list[AgentDefinition], str]:
        limit = page_size(size, 100, 1000)
        after = read_token(token) or ""
        session = await self.open_session(ref)
        rows = await self.store.list_agents(session.conversation, session.create_us, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        agents = [self._loaded(session, row) for row in rows]
        return agents, page_token(rows[-1].name) if more else ""

    async def delete(self, ref: SessionRef, name: str, allow_missing: bool) -> bool:
        session = await self.open_session(ref)
        deleted = await self.store.delete_agent(session.conversation, name, session.create_us)
        if not deleted and not allow_missing:
            raise _not_found(session.conversation, name)
        return deleted
