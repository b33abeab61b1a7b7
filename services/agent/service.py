"""The agent service's business layer: agent definitions, turns and workflows.

It talks to the state, memory and knowledge services through the SDK's clients, over gRPC, like any
other caller (so a replica of it can run anywhere), and to the LLM through sessionkit_server.agent.llm. Agent
definitions, options and turn metadata are the sessionkit.v1 messages themselves: the contract is the
data model, and a definition is stored as its serialized message.

A turn (:meth:`AgentService.chat`):
1. resolve the session (NOT_FOUND when it does not exist) and the agent;
2. an idempotency key already seen replays the first call's result;
3. take the session's conversation lease (serialized across replicas in the database; WAIT or
   FAIL_FAST);
4. read the agent's recent history from the event log; append the user's message to it (so it is kept
   even when the LLM then fails);
5. search memory and knowledge for the message, concurrently;
6. build the prompt within the token budget; call the LLM, running tool calls for up to
   max_tool_rounds rounds;
7. append the reply (and a record of each tool call) to the event log; write memory (short-term
   exchange, or fact extraction);
8. release the lease. Each step's time is in the result's metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf import duration_pb2, timestamp_pb2

from sessionkit.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
    NotImplementedByServer,
    ResourceExhausted,
    SessionKitError,
    StateConflict,
)
from sessionkit.jsonvalues import from_struct, to_struct
from sessionkit.knowledge_client import KnowledgeClient
from sessionkit.memory_client import MemoryClient
from sessionkit.state_client import SessionRef, StateClient
from sessionkit.v1 import agent_pb2, common_pb2
from sessionkit_server.agent import prompt as prompts
from sessionkit_server.agent.llm import ChatModel, LLMReply, ToolCallRequest
from sessionkit_server.agent.store import AgentStore, Conversation
from sessionkit_server.agent.tools import (
    BUILTINS,
    CLIENT,
    SERVER,
    ToolSpec,
    check_tools,
    parse_arguments,
    result_json,
)
from sessionkit_server.common.identity import session_key
from sessionkit_server.common.paging import page_size, page_token, read_token

log = logging.getLogger("sessionkit.agent")

#: Agent names: printable, no leading/trailing spaces.
MAX_NAME = 128
MAX_TASKS = 50


def _now_us() -> int:
    return time.time_ns() // 1000


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _timestamp(us: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(us)
    return ts


@dataclass
class AgentSettings:
    #: Prompt budget in tokens (system prompt, context, history and message).
    context_tokens: int = 6000
    #: A turn's conversation lease; renewed while the turn runs, so only a dead replica's lapses.
    lease_seconds: float = 30.0
    #: How often a waiting turn looks again (a turn ending in this process wakes it at once).
    busy_poll_seconds: float = 0.1
    max_agents_per_session: int = 100
    default_history_events: int = 20
    default_tool_rounds: int = 8
    default_tool_timeout: float = 60.0
    #: Write each turn's memory after answering (the exchange is in the event log already, durably):
    #: embedding it took 40% of a turn's own time (bench/agent_bench.py). False: before answering,
    #: with the ids in TurnMetadata.stored_memory_ids.
    memory_after_reply: bool = True


class LLMRouter(Protocol):
    """Which ChatModel serves a model name (and which name the default is)."""

    async def resolve(self, requested: str) -> tuple[ChatModel, str]: ...

    def check(self, requested: str) -> None: ...

    def budget(self, requested: str, max_tokens: int) -> int | None: ...

    def default_max_tokens(self) -> int: ...


class TurnIO:
    """Where a turn's progress goes. The unary Chat ignores it; ChatStream sends it to the client and
    answers CLIENT tool calls."""

    async def started(self, turn_id: str, waited: float) -> None:
        return None

    async def delta(self, text: str, round_: int) -> None:
        return None

    async def tool_completed(self, record: agent_pb2.ToolCallRecord) -> None:
        return None

    async def client_tool(
        self, call: agent_pb2.ChatToolCall, tool_timeout: float
    ) -> tuple[str | None, str | None]:
        """Ask the client to run a CLIENT tool: (result_json, None) or (None, error)."""
        return None, "client tools can only be used through ChatStream"


@dataclass
class Upstream:
    state: StateClient
    memory: MemoryClient | None
    knowledge: KnowledgeClient | None


@dataclass
class _Turn:
    """What one turn accumulates."""

    turn_id: str
    metadata: agent_pb2.TurnMetadata
    started: float = field(default_factory=time.perf_counter)


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


def _specs(tools: Any) -> list[ToolSpec]:
    return [
        ToolSpec(t.name, t.description, from_struct(t.parameters), t.execution or CLIENT)  # type: ignore[arg-type]
        for t in tools
    ]


def _tool_message(spec: ToolSpec) -> agent_pb2.AgentTool:
    return agent_pb2.AgentTool(
        name=spec.name,
        description=spec.description,
        parameters=to_struct(spec.parameters),
        execution=spec.execution,  # type: ignore[arg-type]
    )


#: The API key of the call being served: the service calls the other services with the caller's own
#: key, so their auth checks apply to what the agent does on the caller's behalf.
caller_key: contextvars.ContextVar[str | None] = contextvars.ContextVar("caller_key", default=None)


class AgentService:
    def __init__(
        self,
        store: AgentStore,
        upstream: Upstream | Callable[[str | None], Upstream],
        llm: LLMRouter,
        settings: AgentSettings | None = None,
    ) -> None:
        self.store = store
        self._upstream_for = upstream if callable(upstream) else (lambda _key: upstream)
        self._upstreams: dict[str | None, Upstream] = {}
        self.llm = llm
        self.settings = settings or AgentSettings()
        # Turns ending in this process wake the turns waiting for the same session at once; waiters on
        # other replicas find the released lease on their next poll.
        self._released: dict[Conversation, asyncio.Event] = {}
        self._writes: set[asyncio.Task[Any]] = set()

    @property
    def upstream(self) -> Upstream:
        """The clients of the other services, with the current caller's key."""
        key = caller_key.get()
        found = self._upstreams.get(key)
        if found is None:
            found = self._upstreams[key] = self._upstream_for(key)
        return found

    async def start(self) -> None:
        await self.store.start()

    async def close(self) -> None:
        if self._writes:  # memory writes of answered turns: let them land
            await asyncio.wait(set(self._writes), timeout=30)
        close = getattr(self.llm, "close", None)
        if close is not None:
            await close()

    # -- sessions and agents --------------------------------------------------------------------------

    async def _session(self, ref: common_pb2.SessionRef) -> tuple[SessionRef, Conversation, int]:
        key = session_key(ref.app_name, ref.user_id, ref.session_id)
        sref = SessionRef(key.app_name, key.user_id, key.session_id)
        info = await self.upstream.state.get_session(sref)  # SessionNotFound when missing
        created = int(info.create_time.timestamp() * 1_000_000) if info.create_time else 0
        return sref, Conversation(key.app_name, key.user_id, key.session_id), created

    def _validate(self, agent: agent_pb2.AgentDefinition) -> agent_pb2.AgentDefinition:
        check_agent_name(agent.name)
        violations = []
        if agent.HasField("temperature") and not 0 <= agent.temperature <= 2:
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
        tools = check_tools(_specs(agent.tools), "agent.tools")
        self.llm.check(agent.model)
        stored = agent_pb2.AgentDefinition()
        stored.CopyFrom(agent)
        stored.ClearField("session")
        stored.ClearField("create_time")
        stored.ClearField("update_time")
        del stored.tools[:]
        stored.tools.extend(_tool_message(t) for t in tools)
        return stored

    def _definition(
        self, ref: SessionRef, data: bytes, create_us: int, update_us: int
    ) -> agent_pb2.AgentDefinition:
        agent = agent_pb2.AgentDefinition.FromString(data)
        agent.session.CopyFrom(ref.message)
        agent.create_time.CopyFrom(_timestamp(create_us))
        agent.update_time.CopyFrom(_timestamp(update_us))
        return agent

    async def create_agent(
        self, ref: common_pb2.SessionRef, agent: agent_pb2.AgentDefinition, if_exists: int
    ) -> tuple[agent_pb2.AgentDefinition, bool]:
        stored = self._validate(agent)
        sref, conv, created_us = await self._session(ref)
        mode = {agent_pb2.CreateAgentRequest.REPLACE: "replace", agent_pb2.CreateAgentRequest.GET: "get"}.get(
            if_exists,
            "fail",  # type: ignore[call-overload]
        )
        existing = await self.store.list_agents(
            conv, created_us, "", self.settings.max_agents_per_session + 1
        )
        if len(existing) >= self.settings.max_agents_per_session and all(
            a.name != agent.name for a in existing
        ):
            raise ResourceExhausted(
                f"session {conv.session_id!r} already has {len(existing)} agents "
                f"(limit {self.settings.max_agents_per_session})",
                reason="AGENT_LIMIT",
            )
        row, created = await self.store.put_agent(
            conv, agent.name, stored.SerializeToString(deterministic=True), created_us, mode, _now_us()
        )
        if not created and mode == "fail":
            raise AlreadyExists(
                f"session {conv.session_id!r} already has an agent named {agent.name!r}",
                reason="AGENT_EXISTS",
                metadata={"agent_name": agent.name},
            )
        return self._definition(sref, row.definition, row.create_us, row.update_us), created

    async def get_agent(self, ref: common_pb2.SessionRef, name: str) -> agent_pb2.AgentDefinition:
        sref, conv, created_us = await self._session(ref)
        return await self._get(sref, conv, created_us, name)

    async def _get(
        self, sref: SessionRef, conv: Conversation, created_us: int, name: str
    ) -> agent_pb2.AgentDefinition:
        row = await self.store.get_agent(conv, name, created_us)
        if row is None:
            raise NotFound(
                f"session {conv.session_id!r} has no agent named {name!r}",
                reason="AGENT_NOT_FOUND",
                metadata={"agent_name": name},
            )
        return self._definition(sref, row.definition, row.create_us, row.update_us)

    async def list_agents(
        self, ref: common_pb2.SessionRef, size: int, token: str
    ) -> tuple[list[agent_pb2.AgentDefinition], str]:
        limit = page_size(size, 100, 1000)
        after = read_token(token) or ""
        sref, conv, created_us = await self._session(ref)
        rows = await self.store.list_agents(conv, created_us, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        agents = [self._definition(sref, r.definition, r.create_us, r.update_us) for r in rows]
        return agents, page_token(rows[-1].name) if more else ""

    async def delete_agent(self, ref: common_pb2.SessionRef, name: str, allow_missing: bool) -> bool:
        _, conv, created_us = await self._session(ref)
        deleted = await self.store.delete_agent(conv, name, created_us)
        if not deleted and not allow_missing:
            raise NotFound(
                f"session {conv.session_id!r} has no agent named {name!r}",
                reason="AGENT_NOT_FOUND",
                metadata={"agent_name": name},
            )
        return deleted

    # -- the conversation lease -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _conversation(
        self, conv: Conversation, options: agent_pb2.ChatOptions, deadline: float | None
    ) -> AsyncIterator[float]:
        """Hold the session's conversation; yields the seconds spent waiting for it."""
        holder = uuid.uuid4().hex
        ttl_us = int(self.settings.lease_seconds * 1_000_000)
        begin = time.monotonic()
        limit = deadline
        if options.HasField("busy_timeout"):
            wait = options.busy_timeout.ToNanoseconds() / 1e9
            limit = min(limit, begin + wait) if limit is not None else begin + wait
        while not await self.store.try_lease(conv, holder, _now_us(), ttl_us):
            now = time.monotonic()
            if options.busy_policy == agent_pb2.ChatOptions.FAIL_FAST or (limit is not None and now >= limit):
                raise StateConflict(
                    f"session {conv.session_id!r} is busy with another turn",
                    reason="CONVERSATION_BUSY",
                    metadata={"session_id": conv.session_id},
                    retry_after=self.settings.busy_poll_seconds * 5,
                )
            event = self._released.setdefault(conv, asyncio.Event())
            pause = self.settings.busy_poll_seconds
            if limit is not None:
                pause = max(0.0, min(pause, limit - now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), pause)
        waited = time.monotonic() - begin
        renew = asyncio.create_task(self._renew(conv, holder, ttl_us))
        try:
            yield waited
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew
            # Released even when the turn was cancelled: shield it from the cancellation.
            await asyncio.shield(self.store.release_lease(conv, holder))
            released = self._released.pop(conv) if conv in self._released else None
            if released is not None:
                released.set()

    async def _renew(self, conv: Conversation, holder: str, ttl_us: int) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            await self.store.renew_lease(conv, holder, _now_us(), ttl_us)

    # -- idempotency ----------------------------------------------------------------------------------

    async def _idempotent(
        self,
        conv: Conversation,
        key: str,
        method: str,
        run: Callable[[], Awaitable[bytes]],
    ) -> tuple[bytes, bool]:
        """Run ``run`` once per key: (response, replayed)."""
        if not key:
            return await run(), False
        if len(key) > 128:
            raise InvalidArgument(
                "idempotency_key is too long",
                violations=[FieldViolation("idempotency_key", "at most 128 characters")],
            )
        while True:
            claim = await self.store.claim(conv, key, method, _now_us())
            if claim.response is not None:
                return claim.response, True
            if claim.claimed:
                break
            # The first call with this key is still running: wait for its response (or its failure).
            await asyncio.sleep(self.settings.busy_poll_seconds)
        try:
            response = await run()
        except BaseException:
            await asyncio.shield(self.store.abandon(conv, key))
            raise
        await self.store.complete(conv, key, response)
        return response, False

    # -- turns ----------------------------------------------------------------------------------------

    async def chat(
        self,
        ref: common_pb2.SessionRef,
        agent_name: str,
        message: str,
        options: agent_pb2.ChatOptions,
        *,
        idempotency_key: str = "",
        stream: bool = False,
        client_tools: list[ToolSpec] | None = None,
        io: TurnIO | None = None,
        deadline: float | None = None,
    ) -> agent_pb2.ChatTurnResult:
        if not message.strip():
            raise InvalidArgument(
                "the message is empty", violations=[FieldViolation("message", "must not be empty")]
            )
        check_agent_name(agent_name, "agent_name")
        io = io or TurnIO()
        sref, conv, created_us = await self._session(ref)
        agent = await self._get(sref, conv, created_us, agent_name)
        extra = check_tools(client_tools or [], "start.tools", client_only=True)
        clash = {t.name for t in extra} & {t.name for t in agent.tools}
        if clash:
            raise InvalidArgument(
                f"tool {sorted(clash)[0]!r} is already one of the agent's tools",
                violations=[FieldViolation("start.tools", "names must differ from the agent's tools")],
            )

        async def run() -> bytes:
            async with self._conversation(conv, options, deadline) as waited:
                result = await self._turn(sref, agent, message, options, stream, extra, io, waited)
            return result.SerializeToString()

        data, replayed = await self._idempotent(conv, idempotency_key, "Chat", run)
        result = agent_pb2.ChatTurnResult.FromString(data)
        if replayed:
            result.metadata.replayed = True
        return result

    async def _turn(
        self,
        ref: SessionRef,
        agent: agent_pb2.AgentDefinition,
        message: str,
        options: agent_pb2.ChatOptions,
        stream: bool,
        extra_tools: list[ToolSpec],
        io: TurnIO,
        waited: float,
        extra_context: str = "",
        turn_metadata: dict[str, Any] | None = None,
    ) -> agent_pb2.ChatTurnResult:
        begin = time.perf_counter()
        turn_id = uuid.uuid4().hex
        meta = agent_pb2.TurnMetadata(turn_id=turn_id, agent_name=agent.name)
        meta.start_time.GetCurrentTime()
        lat = meta.latency
        await io.started(turn_id, waited)
        event_meta: dict[str, Any] = {
            **from_struct(options.metadata),
            **(turn_metadata or {}),
            "turn_id": turn_id,
            "agent": agent.name,
        }
        state = self.upstream.state

        # History: this agent's part of the session's event log, read before the new message.
        t0 = time.perf_counter()
        history_n = agent.history_max_events or self.settings.default_history_events
        events, _ = await state.list_events(ref, tail=min(1000, history_n * 4))
        mine = [
            e
            for e in events
            if e.role in ("user", "assistant") and e.content and e.metadata.get("agent") == agent.name
        ][-history_n:]
        history = [{"role": e.role, "content": e.content} for e in mine]
        # Exchanges kept as short-term memories that are in the history already are not repeated.
        seen_turns = {str(e.metadata.get("turn_id")) for e in mine}
        user_event = await state.append_event(
            ref, "user", message, author="user", metadata=event_meta, idempotency_key=f"{turn_id}:user"
        )
        meta.event_ids.append(user_event.id)
        lat.history_ms = _ms(time.perf_counter() - t0)

        # Memory and knowledge, concurrently.
        use_memory = (
            options.use_memory
            if options.HasField("use_memory")
            else (agent.memory if agent.HasField("memory") else True)
        )
        use_knowledge = (
            options.use_knowledge
            if options.HasField("use_knowledge")
            else (agent.knowledge if agent.HasField("knowledge") else True)
        )
        memories, chunks = await asyncio.gather(
            self._memories(ref, agent, message, lat, seen_turns) if use_memory else _nothing(),
            self._chunks(ref, agent, message, lat) if use_knowledge else _nothing(),
        )

        # The prompt and the LLM rounds.
        requested = options.model or agent.model
        model_client, model = await self.llm.resolve(requested)
        meta.model = model
        max_tokens = options.max_tokens or agent.max_tokens or self.llm.default_max_tokens()
        budget = self.llm.budget(requested, max_tokens) or self.settings.context_tokens
        tools = [BUILTINS.get(t.name, t) if t.execution == SERVER else t for t in _specs(agent.tools)]
        tools = [t for t in tools if isinstance(t, ToolSpec)] + extra_tools
        built = prompts.build(
            prompts.Persona(
                agent.name, agent.role or "Assistant", agent.goal, agent.backstory, agent.instructions
            ),
            message,
            history,
            memories,
            chunks,
            budget,
            [t.name for t in tools],
            extra_context,
        )
        meta.memory_ids.extend(built.memory_ids)
        meta.knowledge_chunk_ids.extend(built.chunk_ids)
        params: dict[str, Any] = {}
        temperature = (
            options.temperature
            if options.HasField("temperature")
            else (agent.temperature if agent.HasField("temperature") else None)
        )
        if temperature is not None:
            params["temperature"] = temperature
        if max_tokens:
            params["max_tokens"] = max_tokens
        for key, value in from_struct(agent.options).items():
            if key in ("top_p", "stop", "response_format", "seed", "presence_penalty", "frequency_penalty"):
                params[key] = value
        text, finish = await self._rounds(
            ref, agent, model_client, model, built.messages, tools, params, stream, io, options, meta
        )
        meta.finish_reason = finish

        # Persist the reply and the tool calls, and write memory.
        t0 = time.perf_counter()
        for record in meta.tool_calls:
            event = await state.append_event(
                ref,
                "tool",
                json.dumps(
                    {
                        "call_id": record.call_id,
                        "tool": record.tool_name,
                        "arguments": record.arguments_json,
                        "result": record.result_json or None,
                        "error": record.error or None,
                    },
                    ensure_ascii=False,
                ),
                author=agent.name,
                metadata=event_meta,
                idempotency_key=f"{turn_id}:tool:{record.call_id}",
            )
            meta.event_ids.append(event.id)
        remember = self._remember(ref, agent, message, text, turn_id) if use_memory else _nothing()
        if self.settings.memory_after_reply:
            task = asyncio.create_task(self._quietly(remember))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)
            remember = _nothing()
        reply_event, stored = await asyncio.gather(
            state.append_event(
                ref,
                "assistant",
                text,
                author=agent.name,
                metadata={**event_meta, "model": model},
                idempotency_key=f"{turn_id}:assistant",
            ),
            remember,
        )
        meta.event_ids.append(reply_event.id)
        meta.stored_memory_ids.extend(stored)
        lat.persistence_ms = _ms(time.perf_counter() - t0)
        lat.total_ms = _ms(time.perf_counter() - begin)
        return agent_pb2.ChatTurnResult(text=text, metadata=meta)

    async def _memories(
        self,
        ref: SessionRef,
        agent: agent_pb2.AgentDefinition,
        message: str,
        lat: agent_pb2.TurnLatency,
        seen_turns: set[str],
    ) -> list[prompts.ContextItem]:
        if self.upstream.memory is None:
            return []
        t0 = time.perf_counter()
        try:
            hits = await self.upstream.memory.search(ref, message, "all", agent.memory_max_items or 3)
        except NotImplementedByServer:
            return []  # the upstream serves no memory: the agent works without it
        finally:
            lat.memory_ms = _ms(time.perf_counter() - t0)
        return [
            prompts.ContextItem(h["id"], h["text"])
            for h in hits
            if str(h["metadata"].get("turn_id")) not in seen_turns
        ]

    async def _chunks(
        self, ref: SessionRef, agent: agent_pb2.AgentDefinition, message: str, lat: agent_pb2.TurnLatency
    ) -> list[prompts.ContextItem]:
        if self.upstream.knowledge is None:
            return []
        t0 = time.perf_counter()
        try:
            hits = await self.upstream.knowledge.search(
                ref,
                message,
                agent.knowledge_max_items or 5,
                scopes=["session", "user"] + (["collection"] if agent.knowledge_collections else []),
                collections=list(agent.knowledge_collections) or None,
                source_names=list(agent.knowledge_sources) or None,
            )
        except NotImplementedByServer:
            return []
        finally:
            lat.knowledge_ms = _ms(time.perf_counter() - t0)
        return [prompts.ContextItem(h["chunk_id"], h["text"], h["source"]["name"]) for h in hits]

    @staticmethod
    async def _quietly(write: Awaitable[list[str]]) -> None:
        try:
            await write
        except Exception as error:  # the turn was answered; its exchange stays in the event log
            log.warning("memory write after a turn failed: %s", error)

    async def _remember(
        self, ref: SessionRef, agent: agent_pb2.AgentDefinition, message: str, reply: str, turn_id: str
    ) -> list[str]:
        memory = self.upstream.memory
        mode = agent.memory_write or agent_pb2.AgentDefinition.MEMORY_WRITE_SHORT_TERM
        if memory is None or mode == agent_pb2.AgentDefinition.MEMORY_WRITE_NONE:
            return []
        metadata: dict[str, Any] = {"turn_id": turn_id, "agent": agent.name}
        if mode == agent_pb2.AgentDefinition.MEMORY_WRITE_EXTRACT:
            try:
                outcome = await memory.extract(
                    ref,
                    [{"role": "user", "content": message}, {"role": "assistant", "content": reply}],
                    metadata=metadata,
                    idempotency_key=f"{turn_id}:extract",
                )
                return [op["memory"]["id"] for op in outcome["operations"] if op.get("memory")]
            except SessionKitError as error:
                # The turn itself succeeded: losing the extraction must not lose the answer. The
                # exchange is kept as a short-term memory instead.
                log.warning("memory extraction failed, keeping the exchange short-term: %s", error)
        added = await memory.add(
            ref,
            f"User: {message}\n{agent.name}: {reply}",
            "short",
            metadata=metadata,
            idempotency_key=f"{turn_id}:memory",
        )
        return [added["id"]] if added.get("id") else []

    async def _rounds(
        self,
        ref: SessionRef,
        agent: agent_pb2.AgentDefinition,
        client: ChatModel,
        model: str,
        messages: list[dict[str, Any]],
        tools: list[ToolSpec],
        params: dict[str, Any],
        stream: bool,
        io: TurnIO,
        options: agent_pb2.ChatOptions,
        meta: agent_pb2.TurnMetadata,
    ) -> tuple[str, str]:
        max_rounds = agent.max_tool_rounds or self.settings.default_tool_rounds
        functions = [t.function() for t in tools]
        by_name = {t.name: t for t in tools}
        lat = meta.latency
        timeout = (
            options.tool_result_timeout.ToNanoseconds() / 1e9
            if options.HasField("tool_result_timeout")
            else self.settings.default_tool_timeout
        )
        for round_ in range(max_rounds + 1):
            offer = functions if functions and round_ < max_rounds else None

            async def on_delta(text: str, r: int = round_) -> None:
                await io.delta(text, r)

            t0 = time.perf_counter()
            try:
                reply: LLMReply = await client.complete(
                    model, messages, tools=offer, params=params, on_delta=on_delta if stream else None
                )
            finally:
                lat.llm_ms += _ms(time.perf_counter() - t0)
            meta.usage.prompt_tokens += reply.prompt_tokens
            meta.usage.completion_tokens += reply.completion_tokens
            meta.usage.total_tokens = meta.usage.prompt_tokens + meta.usage.completion_tokens
            if not reply.tool_calls:
                return reply.text, reply.finish_reason or "stop"
            if offer is None:
                return reply.text, "max_tool_rounds"
            meta.tool_rounds = round_ + 1
            messages.append(
                {
                    "role": "assistant",
                    "content": reply.text or None,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments},
                        }
                        for c in reply.tool_calls
                    ],
                }
            )
            t0 = time.perf_counter()
            try:
                records = await asyncio.gather(
                    *(self._tool(ref, by_name.get(c.name), c, round_, io, timeout) for c in reply.tool_calls)
                )
            finally:
                lat.tools_ms += _ms(time.perf_counter() - t0)
            for call, record in zip(reply.tool_calls, records, strict=True):
                meta.tool_calls.append(record)
                await io.tool_completed(record)
                content = record.result_json if not record.error else json.dumps({"error": record.error})
                messages.append({"role": "tool", "tool_call_id": call.id, "content": content})
        raise AssertionError("unreachable")  # pragma: no cover - the last round offers no tools

    async def _tool(
        self,
        ref: SessionRef,
        spec: ToolSpec | None,
        call: ToolCallRequest,
        round_: int,
        io: TurnIO,
        tool_timeout: float,
    ) -> agent_pb2.ToolCallRecord:
        record = agent_pb2.ToolCallRecord(
            call_id=call.id, tool_name=call.name, arguments_json=call.arguments, round=round_
        )
        t0 = time.perf_counter()
        try:
            if spec is None:
                raise ValueError(f"unknown tool {call.name!r}")
            record.execution = spec.execution  # type: ignore[assignment]
            if spec.execution == SERVER:
                record.result_json = result_json(
                    await self._server_tool(ref, spec.name, parse_arguments(call.arguments))
                )
            else:
                request = agent_pb2.ChatToolCall(
                    call_id=call.id, tool_name=call.name, arguments_json=call.arguments, round=round_
                )
                result, error = await io.client_tool(request, tool_timeout)
                if error is not None:
                    raise ValueError(error)
                record.result_json = result_json(json.loads(result or "null"))
        except (ValueError, SessionKitError) as error:
            # The model gets the failure as the tool's result and the turn goes on.
            record.error = str(error) or type(error).__name__
            record.result_json = ""
        record.latency_ms = _ms(time.perf_counter() - t0)
        return record

    async def _server_tool(self, ref: SessionRef, name: str, args: dict[str, Any]) -> Any:
        up = self.upstream
        limit = args.get("limit", 5)
        if not isinstance(limit, int) or not 1 <= limit <= 20:
            limit = 5
        if name == "search_memory":
            if up.memory is None:
                raise ValueError("memory is not served here")
            hits = await up.memory.search(ref, _str_arg(args, "query"), "all", limit)
            return [
                {"text": h["text"], "type": h["memory_type"], "score": round(h["score"], 4)} for h in hits
            ]
        if name == "search_knowledge":
            if up.knowledge is None:
                raise ValueError("knowledge is not served here")
            hits = await up.knowledge.search(ref, _str_arg(args, "query"), limit, scopes=["session", "user"])
            return [
                {"text": h["text"], "source": h["source"]["name"], "score": round(h["score"], 4)}
                for h in hits
            ]
        if name == "get_state":
            state, _ = await up.state.get_state(ref, [_str_arg(args, "key")])
            return state.get(args["key"])
        if name == "set_state":
            key = _str_arg(args, "key")
            if "value" not in args:
                raise ValueError("missing argument 'value'")
            await up.state.set_value(ref, key, args["value"])
            return {"ok": True}
        raise ValueError(f"unknown tool {name!r}")

    # -- workflows ------------------------------------------------------------------------------------

    async def run_workflow(
        self,
        request: agent_pb2.RunWorkflowRequest,
        send: Callable[[agent_pb2.RunWorkflowResponse], Awaitable[None]],
        deadline: float | None = None,
    ) -> None:
        """Run the tasks in order, sending per-task events and the final result through ``send``."""
        tasks = list(request.tasks)
        names = self._check_workflow(request)
        sref, conv, created_us = await self._session(request.session)
        agents = {}
        for n, task in enumerate(tasks):
            if task.agent_name not in agents:
                try:
                    agents[task.agent_name] = await self._get(sref, conv, created_us, task.agent_name)
                except NotFound as error:
                    error.metadata["task_index"] = str(n)
                    raise

        async def run() -> bytes:
            begin = time.perf_counter()
            workflow_id = uuid.uuid4().hex
            outputs: dict[str, str] = {}
            result = agent_pb2.WorkflowResult(workflow_id=workflow_id)
            async with self._conversation(conv, request.options, deadline) as waited:
                for n, task in enumerate(tasks):
                    agent = agents[task.agent_name]
                    io = _WorkflowIO(send, n, names[n], task.agent_name, request.stream)
                    context_names = list(task.context_tasks) or ([names[n - 1]] if n else [])
                    context = [f"Output of task {c!r}:\n{outputs[c]}" for c in context_names]
                    if request.input:
                        context.insert(0, f"The request: {request.input}")
                    prompt = task.description
                    if task.expected_output:
                        prompt += f"\n\nExpected output: {task.expected_output}"
                    try:
                        turn = await self._turn(
                            sref,
                            agent,
                            prompt,
                            request.options,
                            request.stream,
                            [],
                            io,
                            waited if n == 0 else 0.0,
                            extra_context="\n\n".join(context),
                            turn_metadata={"workflow_id": workflow_id, "task": names[n], "task_index": n},
                        )
                    except SessionKitError as error:
                        error.metadata["task_index"] = str(n)
                        raise
                    outputs[names[n]] = turn.text
                    task_result = agent_pb2.WorkflowTaskResult(
                        task_index=n,
                        task_name=names[n],
                        agent_name=agent.name,
                        output=turn.text,
                        metadata=turn.metadata,
                    )
                    result.task_results.append(task_result)
                    result.usage.prompt_tokens += turn.metadata.usage.prompt_tokens
                    result.usage.completion_tokens += turn.metadata.usage.completion_tokens
                    await send(agent_pb2.RunWorkflowResponse(task_result=task_result))
            result.usage.total_tokens = result.usage.prompt_tokens + result.usage.completion_tokens
            result.final_output = result.task_results[-1].output
            result.duration.CopyFrom(_duration(time.perf_counter() - begin))
            return result.SerializeToString()

        data, replayed = await self._idempotent(conv, request.idempotency_key, "RunWorkflow", run)
        final = agent_pb2.WorkflowResult.FromString(data)
        if replayed:
            for task_result in final.task_results:
                task_result.metadata.replayed = True
                await send(agent_pb2.RunWorkflowResponse(task_result=task_result))
        await send(agent_pb2.RunWorkflowResponse(result=final))

    def _check_workflow(self, request: agent_pb2.RunWorkflowRequest) -> list[str]:
        tasks = list(request.tasks)
        if not 1 <= len(tasks) <= MAX_TASKS:
            raise InvalidArgument(
                f"a workflow has 1 to {MAX_TASKS} tasks, not {len(tasks)}",
                violations=[FieldViolation("tasks", f"1 to {MAX_TASKS} tasks")],
            )
        if request.process not in (0, agent_pb2.RunWorkflowRequest.SEQUENTIAL):
            raise InvalidArgument(
                "unsupported process", violations=[FieldViolation("process", "only SEQUENTIAL is supported")]
            )
        names: list[str] = []
        for n, task in enumerate(tasks):
            name = task.name or f"task-{n + 1}"
            if name in names:
                raise InvalidArgument(
                    f"duplicate task name {name!r}",
                    violations=[FieldViolation(f"tasks[{n}].name", "must be unique")],
                )
            if not task.description.strip():
                raise InvalidArgument(
                    f"task {name!r} has no description",
                    violations=[FieldViolation(f"tasks[{n}].description", "must not be empty")],
                )
            check_agent_name(task.agent_name, f"tasks[{n}].agent_name")
            for c in task.context_tasks:
                if c not in names:
                    raise InvalidArgument(
                        f"task {name!r} takes context from {c!r}, which is not an earlier task",
                        violations=[FieldViolation(f"tasks[{n}].context_tasks", "must name earlier tasks")],
                    )
            names.append(name)
        return names


class _WorkflowIO(TurnIO):
    def __init__(
        self,
        send: Callable[[agent_pb2.RunWorkflowResponse], Awaitable[None]],
        index: int,
        name: str,
        agent: str,
        stream: bool,
    ) -> None:
        self.send, self.index, self.name, self.agent, self.stream = send, index, name, agent, stream

    async def started(self, turn_id: str, waited: float) -> None:
        await self.send(
            agent_pb2.RunWorkflowResponse(
                task_started=agent_pb2.WorkflowTaskStarted(
                    task_index=self.index, task_name=self.name, agent_name=self.agent, turn_id=turn_id
                )
            )
        )

    async def delta(self, text: str, round_: int) -> None:
        if self.stream:
            await self.send(
                agent_pb2.RunWorkflowResponse(
                    text_delta=agent_pb2.WorkflowTextDelta(task_index=self.index, text=text)
                )
            )


async def _nothing() -> list[Any]:
    return []


def _str_arg(args: dict[str, Any], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"argument {name!r} must be a non-empty string")
    return value
