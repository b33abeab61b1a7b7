"""Turns and workflows with an idempotency key run once per key and session: a repeat gets the first
call's response, and a repeat that arrives while the first call runs waits for it. The claim rows are
the agent store's (sessionkit_server.agent.store), so this holds across replicas."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sessionkit.errors import FieldViolation, InvalidArgument
from sessionkit_server.agent.store import AgentStore, Conversation
from sessionkit_server.common.timestamps import now_us


async def run_once(
    store: AgentStore,
    conv: Conversation,
    key: str,
    method: str,
    run: Callable[[], Awaitable[bytes]],
    poll_seconds: float,
) -> tuple[bytes, bool]:
    """Run ``run`` once per key: (its serialized response, replayed)."""
    if not key:
        return await run(), False
    if len(key) > 128:
        raise InvalidArgument(
            "idempotency_key is too long",
            violations=[FieldViolation("idempotency_key", "at most 128 characters")],
        )
    while True:
        claim = await store.claim(conv, key, method, now_us())
        if claim.response is not None:
            return claim.response, True
        if claim.claimed:
            break
        # The first call with this key is still running: wait for its response (or its failure).
        await asyncio.sleep(poll_seconds)
    try:
        response = await run()
    except BaseException:
        await asyncio.shield(store.abandon(conv, key))
        raise
    await store.complete(conv, key, response)
    return response, False
