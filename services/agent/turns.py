"""The turn pipeline: one user message to one agent, and its reply.

A turn (:meth:`Turns.chat`):
1. resolve the session (NOT_FOUND when it does not exist) and the agent;
2. an idempotency key already seen replays the first call's result (sessionkit_server.agent.idempotent);
3. take the session's conversation lease (sessionkit_server.agent.conversations; WAIT or FAIL_FAST);
4. read the agent's recent history, then append the user's message to the event log (so it is kept
   even when the LLM then fails), while memory and knowledge are searched for the message
   (sessionkit_server.agent.turn_context);
5. build the prompt within the token budget (sessionkit_server.agent.prompt); call the LLM, running tool
   calls for up to max_tool_rounds rounds (sessionkit_server.agent.tool_rounds), streaming through the
   TurnIO;
6. append the reply (and a record of each tool call) to the event log; write memory (the short-term
   exchange, or fact extraction), by default after answering;
7. release the lease. Each step's time is in the result's metadata.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import uuid
from collections.abc import Awaitable
from typing import Any

from sessionkit.errors import FieldViolation, InvalidArgument, SessionKitError
from sessionkit.jsonvalues import JsonValue
from sessionkit.state_client import SessionRef
from sessionkit_server.agent import prompt as prompts
from sessionkit_server.agent.conversations import ConversationLeases
from sessionkit_server.agent.convert import turn_result_bytes, turn_result_from_bytes
from sessionkit_server.agent.definitions import AgentDefinitions, check_agent_name
from sessionkit_server.agent.idempotent import run_once
from sessionkit_server.agent.latency import ms
from sessionkit_server.agent.records import (
    AgentDefinition,
    ChatOptions,
    MemoryWrite,
    TurnMetadata,
    TurnResult,
)
from sessionkit_server.agent.settings import AgentSettings
from sessionkit_server.agent.tool_rounds import Rounds
from sessionkit_server.agent.tools import BUILTINS, SERVER, ToolSpec, check_tools
from sessionkit_server.agent.turn_context import ContextRequest, read_context
from sessionkit_server.agent.turn_io import TurnIO
from sessionkit_server.agent.upstream import LLMRouter, Upstream, Upstreams
from sessionkit_server.common import checks
from sessionkit_server.common.timestamps import now_us

log = logging.getLogger("sessionkit.agent")

#: Agent options passed on to the model as sampling parameters.
MODEL_PARAMS = ("top_p", "stop", "response_format", "seed", "presence_penalty", "frequency_penalty")


class Turns:
    def __init__(
        self,
        definitions: AgentDefinitions,
        leases: ConversationLeases,
        upstreams: Upstreams,
        llm: LLMRouter,
        settings: AgentSettings,
    ) -> None:
        self.definitions = definitions
        self.leases = leases
        self.upstreams = upstreams
        self.llm = llm
        self.settings = settings
        self._writes: set[asyncio.Task[Any]] = set()

    async def drain(self) -> None:
        """Let the memory writes of answered turns land."""
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=30)

    async def chat(
        self,
        ref: SessionRef,
        agent_name: str,
        message: str,
        options: ChatOptions,
        *,
        idempotency_key: str = "",
        stream: bool = False,
        client_tools: list[ToolSpec] | None = None,
        io: TurnIO | None = None,
        deadline: float | None = None,
    ) -> TurnResult:
        if not message.strip():
            raise InvalidArgument(
                "the message is empty", violations=[FieldViolation("message", "must not be empty")]
            )
        check_agent_name(agent_name, "agent_name")
        # Everything the request alone decides is checked before the session or agent is looked up:
        # the gateway creates a missing session and agent on NOT_FOUND, so a request refused for bad
        # input must be refused first, before anything is written.
        check_chat_options(options)
        checks.text(message, "message")
        if options.model:
            self.llm.check(options.model)
        turn_io = io or TurnIO()
        session = await self.definitions.open_session(ref)
        agent = await self.definitions.find(session, agent_name)
        # The agent's own model was checked when it was defined; checked again here, before the turn
        # stores the user's message, in case the server's models changed since.
        self.llm.check(options.model or agent.model)
        extra = check_tools(client_tools or [], "start.tools", client_only=True)
        clash = {t.name for t in extra} & {t.name for t in agent.tools}
        if clash:
            raise InvalidArgument(
                f"tool {sorted(clash)[0]!r} is already one of the agent's tools",
                violations=[FieldViolation("start.tools", "names must differ from the agent's tools")],
            )

        if _first(options.use_memory, agent.memory, True) or _first(
            options.use_knowledge, agent.knowledge, True
        ):
            _prefetch_embedding(message)

        async def run(waited: float) -> bytes:
            result = await self.run(session.ref, agent, message, options, stream, extra, turn_io, waited)
            return turn_result_bytes(result)

        data, replayed = await run_once(
            self.definitions.store,
            self.leases,
            session.conversation,
            idempotency_key,
            "Chat",
            options,
            deadline,
            run,
            self.settings.busy_poll_seconds,
        )
        result = turn_result_from_bytes(data)
        result.metadata.replayed = replayed
        return result

    async def run(
        self,
        ref: SessionRef,
        agent: AgentDefinition,
        message: str,
        options: ChatOptions,
        stream: bool,
        extra_tools: list[ToolSpec],
        io: TurnIO,
        waited: float,
        extra_context: str = "",
        turn_metadata: dict[str, JsonValue] | None = None,
    ) -> TurnResult:
        """Run a turn in a conversation already held (steps 4 to 6)."""
        begin = time.perf_counter()
        turn_id = uuid.uuid4().hex
        meta = TurnMetadata(turn_id=turn_id, agent_name=agent.name, start_us=now_us())
        await io.started(turn_id, waited)
        event_meta: dict[str, JsonValue] = {
            **options.metadata,
            **(turn_metadata or {}),
            "turn_id": turn_id,
            "agent": agent.name,
        }
        up = self.upstreams.current()
        use_memory = _first(options.use_memory, agent.memory, True)
        context = await read_context(
            up,
            ContextRequest(
                ref,
                agent,
                message,
                agent.history_max_events or self.settings.default_history_events,
                use_memory,
                _first(options.use_knowledge, agent.knowledge, True),
                event_meta,
                turn_id,
            ),
            meta.latency,
        )
        meta.event_ids.append(context.user_event_id)

        requested = options.model or agent.model
        model_client, model = await self.llm.resolve(requested)
        meta.model = model
        max_tokens = options.max_tokens or agent.max_tokens or self.llm.default_max_tokens()
        budget = self.llm.budget(requested, max_tokens) or self.settings.context_tokens
        tools = [BUILTINS.get(t.name, t) if t.execution == SERVER else t for t in agent.tools] + extra_tools
        built = prompts.build(
            prompts.Persona(
                agent.name, agent.role or "Assistant", agent.goal, agent.backstory, agent.instructions
            ),
            message,
            context.history,
            context.memories,
            context.chunks,
            budget,
            [t.name for t in tools],
            extra_context,
        )
        meta.memory_ids.extend(built.memory_ids)
        meta.knowledge_chunk_ids.extend(built.chunk_ids)
        params: dict[str, Any] = {}
        temperature = _first(options.temperature, agent.temperature, None)
        if temperature is not None:
            params["temperature"] = temperature
        if max_tokens:
            params["max_tokens"] = max_tokens
        params.update({k: v for k, v in agent.options.items() if k in MODEL_PARAMS})
        rounds = Rounds(
            up,
            ref,
            model_client,
            model,
            tools,
            params,
            stream,
            io,
            agent.max_tool_rounds or self.settings.default_tool_rounds,
            options.tool_result_timeout
            if options.tool_result_timeout is not None
            else self.settings.default_tool_timeout,
        )
        text, meta.finish_reason = await rounds.run(built.messages, meta)
        await self._persist(up, ref, agent, message, text, meta, event_meta, use_memory)
        meta.latency.total_ms = ms(time.perf_counter() - begin)
        return TurnResult(text, meta)

    async def _persist(
        self,
        up: Upstream,
        ref: SessionRef,
        agent: AgentDefinition,
        message: str,
        text: str,
        meta: TurnMetadata,
        event_meta: dict[str, JsonValue],
        use_memory: bool,
    ) -> None:
        """Append the tool calls and the reply to the event log, and write memory."""
        t0 = time.perf_counter()
        for record in meta.tool_calls:
            event = await up.state.append_event(
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
                idempotency_key=f"{meta.turn_id}:tool:{record.call_id}",
            )
            meta.event_ids.append(event.id)
        remember = _remember(up, ref, agent, message, text, meta.turn_id) if use_memory else _nothing()
        if self.settings.memory_after_reply:
            task = asyncio.create_task(_quietly(remember))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)
            remember = _nothing()
        reply_event, stored = await asyncio.gather(
            up.state.append_event(
                ref,
                "assistant",
                text,
                author=agent.name,
                metadata={**event_meta, "model": meta.model},
                idempotency_key=f"{meta.turn_id}:assistant",
            ),
            remember,
        )
        meta.event_ids.append(reply_event.id)
        meta.stored_memory_ids.extend(stored)
        meta.latency.persistence_ms = ms(time.perf_counter() - t0)


def _prefetch_embedding(message: str) -> None:
    """When this process serves memory or knowledge with a local model, start embedding the message now:
    the turn's searches embed the same text, and the model then runs while the turn takes its lease and
    calls them (the embedding is the longest step of a search). Nothing happens in a process that embeds
    nothing (the module is not even imported there), and the searches stay correct without it."""
    embeddings = sys.modules.get("sessionkit_server.retrieval.embeddings")
    if embeddings is not None:
        embeddings.prefetch(message)


def _first(override: Any, setting: Any, default: Any) -> Any:
    """The turn's override, else the agent's setting, else the default (None means unset)."""
    return override if override is not None else (setting if setting is not None else default)


async def _remember(
    up: Upstream, ref: SessionRef, agent: AgentDefinition, message: str, reply: str, turn_id: str
) -> list[str]:
    """Write the exchange to memory as the agent's memory_write says; the ids written."""
    memory = up.memory
    mode = agent.memory_write or MemoryWrite.SHORT_TERM
    if memory is None or mode == MemoryWrite.NONE:
        return []
    metadata: dict[str, Any] = {"turn_id": turn_id, "agent": agent.name}
    if mode == MemoryWrite.EXTRACT:
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


async def _quietly(write: Awaitable[list[str]]) -> None:
    try:
        await write
    except Exception as error:  # the turn was answered; its exchange stays in the event log
        log.warning("memory write after a turn failed: %s", error)


async def _nothing() -> list[Any]:
    return []


def check_chat_options(options: ChatOptions) -> ChatOptions:
    """The per-turn options' ranges (one rule for gRPC and the gateway, which sends them over gRPC)."""
    if options.temperature is not None:
        checks.number(options.temperature, "options.temperature", low=0, high=2)
    checks.count(options.max_tokens, "options.max_tokens")
    if options.busy_timeout is not None:
        checks.duration(options.busy_timeout, "options.busy_timeout")
    if options.tool_result_timeout is not None:
        checks.duration(options.tool_result_timeout, "options.tool_result_timeout")
    checks.text(options.model, "options.model", max_chars=256)
    checks.json_text(options.metadata, "options.metadata")
    return options
