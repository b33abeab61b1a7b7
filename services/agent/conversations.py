"""Conversation leases: one session runs one turn (or workflow) at a time, across every replica.

The lease is a row in the agent store (sessionkit_server.agent.store), not a lock held by a connection or
by this process: a replica that dies mid-turn frees it when it expires, and a live turn renews it. A
turn that finds the conversation busy waits (polling the row; a turn ending in this process wakes it at
once) or fails fast with CONVERSATION_BUSY, as its options say."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sessionkit import reasons
from sessionkit_server.agent.records import BusyPolicy, ChatOptions
from sessionkit_server.agent.settings import AgentSettings
from sessionkit_server.agent.store import AgentStore, Conversation
from sessionkit_server.common.timestamps import now_us


@dataclass
class Release:
    """What the transaction that releases a lease also does: complete ``key`` with ``response``, or
    drop its claim when the call left no response (sessionkit_server.agent.idempotent)."""

    key: str = ""
    response: bytes | None = None


class ConversationLeases:
    def __init__(self, store: AgentStore, settings: AgentSettings) -> None:
        self.store = store
        self.settings = settings
        # Turns ending in this process wake the turns waiting for the same session at once; waiters on
        # other replicas find the released lease on their next poll.
        self._released: dict[Conversation, asyncio.Event] = {}

    @property
    def ttl_us(self) -> int:
        return int(self.settings.lease_seconds * 1_000_000)

    @contextlib.asynccontextmanager
    async def hold(
        self,
        conv: Conversation,
        options: ChatOptions,
        deadline: float | None,
        *,
        holder: str = "",
        taken: bool = False,
        release: Release | None = None,
    ) -> AsyncIterator[float]:
        """Hold the session's conversation; yields the seconds spent waiting for it. ``deadline`` is
        the call's, on the time.monotonic() clock. ``taken``: ``holder`` took the lease already (in the
        transaction that claimed the call's idempotency key); ``release``: what the releasing
        transaction also does, as the caller set it by then."""
        holder = holder or uuid.uuid4().hex
        ttl_us = self.ttl_us
        begin = time.monotonic()
        limit = deadline
        if options.busy_timeout is not None:
            wait = options.busy_timeout
            limit = min(limit, begin + wait) if limit is not None else begin + wait
        while not taken and not await self.store.try_lease(conv, holder, now_us(), ttl_us):
            now = time.monotonic()
            if options.busy_policy == BusyPolicy.FAIL_FAST or (limit is not None and now >= limit):
                raise reasons.CONVERSATION_BUSY.error(
                    session_id=conv.session_id,
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
            after = release or Release()
            await asyncio.shield(self.store.release_lease(conv, holder, after.key, after.response))
            released = self._released.pop(conv) if conv in self._released else None
            if released is not None:
                released.set()

    async def _renew(self, conv: Conversation, holder: str, ttl_us: int) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            await self.store.renew_lease(conv, holder, now_us(), ttl_us)
