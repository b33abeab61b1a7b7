"""POST /agent: the remote agent protocol of the seed (session-module.md, "Remote Agent Protocol").

Accepts the documented body ``{"messages": [...], "context": {"session_id", "user_id"}}`` and the one
PraisonAI clients send, ``{"query", "session_id", "user_id"}``; answers ``{"response", "session_id",
"metadata"}``, or Server-Sent Events with ``"stream": true`` / ``Accept: text/event-stream``. The
session holds the conversation, so only this turn's message (the last user message) is sent upstream.
A missing session_id creates a session; a missing session or agent is created on first use.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request

from sessionkit import reasons
from sessionkit.errors import (
    FieldViolation,
    InternalError,
    NotFound,
    SessionKitError,
    SessionNotFound,
)
from sessionkit.ids import DEFAULT, id_violation, new_session_id
from sessionkit.state_client import SessionRef
from sessionkit_server.gateway.deps import Caller, CallerDep, IdempotencyKey
from sessionkit_server.gateway.errors import error_body
from sessionkit_server.gateway.models import AgentRequest, AgentResponse
from sessionkit_server.gateway.sse import event_schema, event_stream, sse

log = logging.getLogger("sessionkit.gateway")
T = TypeVar("T")

SSE_DESCRIPTION = (
    "With stream=true or Accept: text/event-stream: Server-Sent Events. `event: started` (data "
    '{"session_id", "turn_id"}) once the turn holds the conversation, `event: delta` (data '
    '{"text": ...}) for each piece of the reply, `event: tool_call` / `event: tool_call_completed` for '
    "server tools, then one `event: result` whose data is the JSON response "
    '({"response", "session_id", "metadata"}); a failure after the stream started is one `event: error` '
    "with the error body."
)


def _message(body: AgentRequest) -> str:
    if body.messages:
        users = [m for m in body.messages if m.role == "user"]
        text = (users[-1] if users else body.messages[-1]).content
        field = "messages"
    else:
        text = body.query if body.query is not None else (body.message or "")
        field = "query"
    if not text.strip():
        raise reasons.INVALID_REQUEST.error(
            detail="no message to send: give messages [{'role': 'user', 'content': ...}] or query",
            violations=[FieldViolation(f"body.{field}", "a non-empty message")],
        )
    return text


def _ids(body: AgentRequest) -> tuple[str, str | None]:
    context = body.context
    session_id = (context.session_id if context else None) or body.session_id or None
    user_id = (context.user_id if context else None) or body.user_id or DEFAULT
    violations = [
        v
        for v in (
            id_violation("body.context.user_id", user_id),
            id_violation("body.context.session_id", session_id) if session_id else None,
        )
        if v is not None
    ]
    if violations:
        raise reasons.INVALID_REQUEST.error(detail="invalid ids in the request", violations=violations)
    return user_id, session_id


class Turn:
    """One /agent turn: the session (created when missing), the agent (created on first use), and a
    chat call that is retried once after creating what was missing."""

    def __init__(
        self, caller: Caller, body: AgentRequest, agent_name: str, idempotency_key: str | None
    ) -> None:
        self.caller = caller
        self.body = body
        self.agent_name = agent_name
        self.key = idempotency_key
        self.message = _message(body)
        self.user_id, self.session_id = _ids(body)
        self.agent = caller.clients.agent()

    async def ref(self) -> SessionRef:
        if self.session_id is None:
            # A new id, not a new session: the first chat call refuses bad input before anything
            # exists, and its SESSION_NOT_FOUND creates the session (run, _create_missing).
            self.session_id = new_session_id()
        return self.caller.ref(self.user_id, self.session_id)

    async def _create_missing(self, ref: SessionRef, error: NotFound) -> None:
        if isinstance(error, SessionNotFound):
            await self.caller.clients.state.create_session(ref, get_if_exists=True)
        elif not reasons.AGENT_NOT_FOUND.matches(error):
            raise error
        await self.agent.create_agent(
            ref,
            {
                "name": self.agent_name,
                "role": "Helpful assistant",
                "instructions": "You are a helpful assistant.",
            },
            if_exists="get",
        )

    async def run(self, call: Callable[[SessionRef], Awaitable[T]]) -> T:
        ref = await self.ref()
        try:
            return await call(ref)
        except NotFound as error:
            await self._create_missing(ref, error)
        return await call(ref)

    def response(self, text: str, metadata: dict[str, Any]) -> AgentResponse:
        assert self.session_id is not None
        return AgentResponse(response=text, session_id=self.session_id, metadata=metadata)


def add(router: APIRouter) -> None:
    @router.post(
        "/agent",
        response_model=AgentResponse,
        tags=["agent"],
        responses={
            200: {
                "content": {
                    "text/event-stream": {
                        "schema": event_schema(
                            "started", "delta", "tool_call", "tool_call_completed", "result", "error"
                        )
                    }
                },
                "description": SSE_DESCRIPTION,
            }
        },
    )
    async def agent(
        body: AgentRequest,
        request: Request,
        caller: CallerDep,
        idempotency_key: IdempotencyKey = None,
    ) -> Any:
        """One agent turn in a session (the remote agent protocol)."""
        gateway = request.app.state.gateway
        turn = Turn(
            caller, body, body.agent or body.agent_name or gateway.settings.default_agent, idempotency_key
        )
        wants_sse = body.stream or "text/event-stream" in request.headers.get("accept", "")
        if not wants_sse:
            result = await turn.run(
                lambda ref: turn.agent.chat(
                    ref, turn.agent_name, turn.message, options=body.options, idempotency_key=turn.key
                )
            )
            return turn.response(result["text"], result["metadata"])

        async def open_stream(ref: SessionRef) -> tuple[AsyncIterator[dict[str, Any]], dict[str, Any]]:
            events = turn.agent.chat_stream(
                ref, turn.agent_name, turn.message, options=body.options, idempotency_key=turn.key
            )
            try:
                # The first event is read before answering, so a refused turn is a plain HTTP error.
                return events, await anext(events)
            except BaseException:
                await events.aclose()
                raise

        events, first = await turn.run(open_stream)
        return event_stream(_stream(turn, events, first), gateway.settings.sse_heartbeat_seconds)


async def _stream(
    turn: Turn, events: AsyncIterator[dict[str, Any]], first: dict[str, Any]
) -> AsyncIterator[bytes]:
    """The SSE body. A client that disconnects cancels this generator (Starlette), and closing
    ``events`` cancels the ChatStream call, so the turn stops upstream too."""
    try:
        event: dict[str, Any] | None = first
        while event is not None:
            kind = event.get("type")
            if kind == "started":
                # Sent at once: the client learns the session id (maybe just created) before any text.
                yield sse("started", {"session_id": turn.session_id, "turn_id": event.get("turn_id", "")})
            elif kind == "delta":
                yield sse("delta", {"text": event.get("text", "")})
            elif kind in ("tool_call", "tool_call_completed"):
                yield sse(kind, {k: v for k, v in event.items() if k != "type"})
            elif kind == "result":
                yield sse("result", turn.response(event["text"], event["metadata"]).model_dump(mode="json"))
            event = await anext(events, None)
    except SessionKitError as error:
        yield sse("error", error_body(error))
    except Exception as error:  # the stream has started: report in-band, never a traceback
        log.error("agent stream failed", exc_info=error)
        yield sse(
            "error", error_body(InternalError("the agent stream failed; the gateway log has the details"))
        )
    finally:
        await events.aclose()  # type: ignore[attr-defined]
