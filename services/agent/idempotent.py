"""Turns and workflows with an idempotency key run once per key and session: a repeat gets the first
call's response, and a repeat that arrives while the first call runs waits for it. The claim rows are
the agent store's (sessionkit_server.agent.store), so this holds across replicas.

The key's claim and the conversation's lease are taken in one transaction, and the key's completion
(or, when the call failed, its release) commits with the lease's release: a turn makes two durable
writes for them, not four."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

from sessionkit.errors import FieldViolation, InvalidArgument
from sessionkit_server.agent.conversations import ConversationLeases, Release
from sessionkit_server.agent.records import ChatOptions
from sessionkit_server.agent.store import AgentStore, Conversation
from sessionkit_server.common.timestamps import now_us


async def run_once(
    store: AgentStore,
    leases: ConversationLeases,
    conv: Conversation,
    key: str,
    method: str,
    options: ChatOptions,
    deadline: float | None,
    run: Callable[[float], Awaitable[bytes]],
    poll_seconds: float,
) -> tuple[bytes, bool]:
    """Run ``run`` once per key, holding the conversation (``run`` gets the seconds waited for it):
    (its serialized response, replayed)."""
    if not key:
        async with leases.hold(conv, options, deadline) as waited:
            return await run(waited), False
    if len(key) > 128:
        raise InvalidArgument(
            "idempotency_key is too long",
            violations=[FieldViolation("idempotency_key", "at most 128 characters")],
        )
    holder = uuid.uuid4().hex
    while True:
        claim, leased = await store.claim_and_lease(conv, key, method, holder, now_us(), leases.ttl_us)
        if claim.response is not None:
            return claim.response, True
        if claim.claimed:
            break
        # The first call with this key is still running: wait for its response (or its failure).
        await asyncio.sleep(poll_seconds)
    release = Release(key)  # no response yet: a failure drops the claim with the lease
    entered = False
    try:
        async with leases.hold(
            conv, options, deadline, holder=holder, taken=leased, release=release
        ) as waited:
            entered = True
            release.response = await run(waited)
    except BaseException:
        if not entered:  # the lease was never held (busy, or the deadline passed): drop the claim alone
            await asyncio.shield(store.abandon(conv, key))
        raise
    assert release.response is not None
    return release.response, False
