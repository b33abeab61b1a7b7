"""Server-Sent Events of the gateway's long streams (the state watch, the agent's streamed turn): one
event encoder, and heartbeats, so a client can tell a quiet stream from a gateway that stopped
answering. Every ``interval`` seconds without an event the body carries an SSE comment
(``: heartbeat``), which SSE clients ignore; the interval is announced in the ``Sessionkit-Heartbeat``
response header, and the SDK fails a stream that brings no byte for a few intervals
(sessionkit.remote)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

#: The response header that announces the heartbeat interval in seconds (the SDK reads it).
HEARTBEAT_HEADER = "Sessionkit-Heartbeat"
HEARTBEAT = b": heartbeat\n\n"


def event_schema(*events: str) -> dict[str, Any]:
    """The OpenAPI schema of one event of a stream that sends ``events``: OpenAPI before 3.2 has the
    schema of a ``text/event-stream`` response describe each event (field name -> value), and
    schema-driven clients and fuzzers validate every event received against it."""
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "enum": list(events)},
            "data": {"type": "string", "contentMediaType": "application/json"},
        },
    }


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def with_heartbeats(body: AsyncIterator[bytes], interval: float) -> AsyncIterator[bytes]:
    """``body``'s chunks, and a heartbeat comment whenever ``interval`` seconds pass without one. The
    pending read is never cancelled by a heartbeat (cancelling it would end the upstream call); when
    the client goes away, it is cancelled and ``body`` closed, which ends the upstream call."""
    pending: asyncio.Future[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(body))
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield HEARTBEAT
                continue
            try:
                chunk = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield chunk
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        await body.aclose()  # type: ignore[attr-defined]


def event_stream(body: AsyncIterator[bytes], interval: float) -> StreamingResponse:
    """The streaming response of an SSE body, with heartbeats every ``interval`` seconds."""
    return StreamingResponse(
        with_heartbeats(body, interval),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", HEARTBEAT_HEADER: f"{interval:g}"},
    )
