"""What a turn reads before the prompt is built: the agent's recent history from the session's event log,
memories and knowledge passages relevant to the message. The three reads run concurrently, and so does
the append of the user's message to the event log (the history leaves it out; it is kept even when the
LLM then fails)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from sessionkit.errors import NotImplementedByServer
from sessionkit.jsonvalues import JsonValue
from sessionkit.state_client import SessionRef
from sessionkit_server.agent.latency import ms
from sessionkit_server.agent.prompt import ContextItem
from sessionkit_server.agent.records import AgentDefinition, TurnLatency
from sessionkit_server.agent.upstream import Upstream


@dataclass
class TurnContext:
    #: The agent's recent exchanges, oldest first ({"role", "content"}), without the new message.
    history: list[dict[str, str]]
    #: Memories not already in the history, best first.
    memories: list[ContextItem]
    #: Knowledge passages, best first.
    chunks: list[ContextItem]
    #: The event id of the user's message, appended to the session's log.
    user_event_id: int


@dataclass
class ContextRequest:
    ref: SessionRef
    agent: AgentDefinition
    message: str
    history_events: int
    use_memory: bool
    use_knowledge: bool
    #: Metadata of the user's event (turn id, agent, the caller's metadata).
    event_metadata: dict[str, JsonValue]
    turn_id: str


async def read_context(up: Upstream, request: ContextRequest, latency: TurnLatency) -> TurnContext:
    """History (then the user's message), memory and knowledge, concurrently. Every read runs to its end
    before an error of one is raised, so a failing search still leaves the user's message logged."""
    outcomes = await asyncio.gather(
        _history(up, request, latency),
        _memories(up, request, latency) if request.use_memory else _nothing(),
        _chunks(up, request, latency) if request.use_knowledge else _nothing(),
        return_exceptions=True,
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    (mine, user_event_id), memory_hits, chunks = outcomes  # type: ignore[misc]
    history = [{"role": e.role, "content": e.content} for e in mine]
    # Exchanges kept as short-term memories that are in the history already are not repeated.
    seen_turns = {str(e.metadata.get("turn_id")) for e in mine}
    memories = [
        ContextItem(h["id"], h["text"])
        for h in memory_hits
        if str(h["metadata"].get("turn_id")) not in seen_turns
    ]
    return TurnContext(history, memories, chunks, user_event_id)


async def _history(up: Upstream, request: ContextRequest, latency: TurnLatency) -> tuple[list[Any], int]:
    """This agent's part of the session's event log without the new message, and the new message's
    event id. The read and the append run concurrently (the append's commit waits for the disk, the read
    does not need it): the read may see the new message, so this turn's own events are left out."""
    t0 = time.perf_counter()
    n = request.history_events
    # One more than the filter needs, in case the new message is among them.
    listed, appended = await asyncio.gather(
        up.state.list_events(request.ref, tail=min(1000, n * 4 + 1)),
        up.state.append_event(
            request.ref,
            "user",
            request.message,
            author="user",
            metadata=request.event_metadata,
            idempotency_key=f"{request.turn_id}:user",
        ),
        return_exceptions=True,
    )
    latency.history_ms = ms(time.perf_counter() - t0)
    for outcome in (appended, listed):
        if isinstance(outcome, BaseException):
            raise outcome
    events, _ = listed  # type: ignore[misc]
    mine = [
        e
        for e in events
        if e.role in ("user", "assistant")
        and e.content
        and e.metadata.get("agent") == request.agent.name
        and e.metadata.get("turn_id") != request.turn_id
    ][-n:]
    return mine, appended.id  # type: ignore[union-attr]


async def _memories(up: Upstream, request: ContextRequest, latency: TurnLatency) -> list[dict[str, Any]]:
    if up.memory is None:
        return []
    t0 = time.perf_counter()
    try:
        return await up.memory.search(
            request.ref, request.message, "all", request.agent.memory_max_items or 3
        )
    except NotImplementedByServer:
        return []  # the upstream serves no memory: the agent works without it
    finally:
        latency.memory_ms = ms(time.perf_counter() - t0)


async def _chunks(up: Upstream, request: ContextRequest, latency: TurnLatency) -> list[ContextItem]:
    if up.knowledge is None:
        return []
    agent = request.agent
    t0 = time.perf_counter()
    try:
        hits = await up.knowledge.search(
            request.ref,
            request.message,
            agent.knowledge_max_items or 5,
            scopes=["session", "user"] + (["collection"] if agent.knowledge_collections else []),
            collections=list(agent.knowledge_collections) or None,
            source_names=list(agent.knowledge_sources) or None,
        )
    except NotImplementedByServer:
        return []
    finally:
        latency.knowledge_ms = ms(time.perf_counter() - t0)
    return [ContextItem(h["chunk_id"], h["text"], h["source"]["name"]) for h in hits]


async def _nothing() -> list[Any]:
    return []
