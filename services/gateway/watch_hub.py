"""Shared watch streams: the gateway's SSE watchers of one session share one upstream WatchState call.

With a call per SSE client, every change was received, decoded, converted and encoded once per watcher
on the gateway and sent once per stream by the state service, all on the event loops that also serve
the writes: 200 idle watchers of a session made its writes 10x slower. Here a session's change is
received and encoded once (``_Feed._pump``) and its bytes queued to each subscriber; a subscriber that
joins a running feed gets its own SNAPSHOT (one GetState), then the feed's changes after it.

Caps (the state service's settings, applied to the gateway's own watchers, since the services see one
stream per session): ``max_watchers_per_session`` and ``max_watchers_per_tenant`` (TOO_MANY_WATCHERS).
A subscriber that does not read (its queue of MAX_BACKLOG changes fills) is ended with an error event
telling it to watch again with since_version, so one slow client never holds the others back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable

from sessionkit import reasons
from sessionkit.errors import InternalError, SessionKitError
from sessionkit.state_client import SessionRef, StateChange, StateClient
from sessionkit_server.common.watchers import tenant_of, too_many_watchers
from sessionkit_server.gateway.errors import error_body
from sessionkit_server.gateway.models import StateChangeOut
from sessionkit_server.gateway.sse import sse

log = logging.getLogger("sessionkit.gateway")

#: Changes queued for one subscriber before it is dropped as too slow.
MAX_BACKLOG = 1000
FeedKey = tuple[str, str, str, str]  # (caller's key id, app_name, user_id, session_id)
#: (version, SSE bytes); version -1 ends the stream (the bytes are its last event, or empty).
Item = tuple[int, bytes]


def change_event(change: StateChange) -> bytes:
    return sse("change", StateChangeOut(**vars(change)).model_dump(mode="json"))


def failure_event(error: BaseException) -> bytes:
    if isinstance(error, SessionKitError):
        return sse("error", error_body(error))
    log.error("state watch failed", exc_info=error)
    return sse("error", error_body(InternalError("the watch failed; the gateway log has the details")))


class _Feed:
    def __init__(self, changes: AsyncIterator[StateChange], on_end: Callable[[], None]) -> None:
        self.subscribers: set[asyncio.Queue[Item]] = set()
        self._changes = changes
        self._on_end = on_end
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._pump(), name="sessionkit-watch-feed")

    async def _pump(self) -> None:
        last = b""
        try:
            async for change in self._changes:
                self.publish((change.version, change_event(change)))
        except Exception as error:  # the streams have started: report in-band, never a traceback
            last = failure_event(error)
        finally:
            self._on_end()
            with contextlib.suppress(Exception):
                await self._changes.aclose()  # type: ignore[attr-defined]
            for queue in list(self.subscribers):
                _end(queue, last)

    def publish(self, item: Item) -> None:
        for queue in list(self.subscribers):
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                self.subscribers.discard(queue)
                _end(queue, _too_slow())


def _end(queue: asyncio.Queue[Item], last: bytes) -> None:
    # Make room: the end must get through even to a full queue (its subscriber reads it last).
    while queue.full():
        queue.get_nowait()
    queue.put_nowait((-1, last))


def _too_slow() -> bytes:
    error = reasons.UNAVAILABLE.error(
        detail=f"this watcher fell {MAX_BACKLOG} changes behind: watch again with since_version"
    )
    return sse("error", error_body(error))


class WatchHub:
    def __init__(self, max_per_session: int, max_per_tenant: int) -> None:
        self.max_per_session = max_per_session
        self.max_per_tenant = max_per_tenant
        self._feeds: dict[FeedKey, _Feed] = {}
        self._tenants: Counter[str] = Counter()

    async def watch(self, key_id: str, ref: SessionRef, state: StateClient) -> AsyncIterator[bytes]:
        """The SSE events of a watch of ``ref`` (since_version 0): its first event is read before this
        returns, so a refused watch (no session, a cap) raises here, as a plain HTTP error."""
        key: FeedKey = (key_id, ref.app_name, ref.user_id, ref.session_id)
        tenant = tenant_of(ref.app_name)
        self._check_caps(key, tenant)
        queue: asyncio.Queue[Item] = asyncio.Queue(MAX_BACKLOG)
        self._tenants[tenant] += 1
        try:
            first = await self._join(key, ref, state, queue)
        except BaseException:
            self._leave(key, tenant, queue)
            raise
        return self._stream(key, tenant, queue, first)

    def _check_caps(self, key: FeedKey, tenant: str) -> None:
        feed = self._feeds.get(key)
        watching = len(feed.subscribers) if feed is not None else 0
        if watching >= self.max_per_session:
            raise too_many_watchers(f"session {key[3]!r}", watching, self.max_per_session, "SESSION")
        if self._tenants[tenant] >= self.max_per_tenant:
            raise too_many_watchers(
                f"tenant {tenant!r}", self._tenants[tenant], self.max_per_tenant, "TENANT"
            )

    async def _join(
        self, key: FeedKey, ref: SessionRef, state: StateClient, queue: asyncio.Queue[Item]
    ) -> tuple[int, bytes]:
        feed = self._feeds.get(key)
        if feed is None:
            changes = state.watch(ref, 0)
            snapshot = await anext(changes)  # type: ignore[call-overload]
            feed = self._feeds.get(key)  # another subscriber may have started one meanwhile
            if feed is None:
                created = feed = _Feed(changes, lambda: self._drop(key, created))
                self._feeds[key] = feed
                feed.subscribers.add(queue)
                feed.start()
                return snapshot.version, change_event(snapshot)
            await changes.aclose()  # type: ignore[attr-defined]
        # Joining a running feed: subscribe first, then read the state, so every change after the
        # snapshot's version is queued (those at or before it are skipped by the stream).
        feed.subscribers.add(queue)
        merged, version = await state.get_state(ref)
        snapshot = StateChange(version, "SNAPSHOT", "", None, merged, None)
        return version, change_event(snapshot)

    def _drop(self, key: FeedKey, feed: _Feed) -> None:
        if self._feeds.get(key) is feed:
            del self._feeds[key]

    def _leave(self, key: FeedKey, tenant: str, queue: asyncio.Queue[Item]) -> None:
        self._tenants[tenant] -= 1
        if self._tenants[tenant] <= 0:
            del self._tenants[tenant]
        feed = self._feeds.get(key)
        if feed is None:
            return
        feed.subscribers.discard(queue)
        if not feed.subscribers and feed.task is not None:
            # The last watcher left: end the upstream call.
            feed.task.cancel()
            self._drop(key, feed)

    async def _stream(
        self, key: FeedKey, tenant: str, queue: asyncio.Queue[Item], first: tuple[int, bytes]
    ) -> AsyncIterator[bytes]:
        """A client that disconnects cancels this generator, which leaves the feed."""
        try:
            seen, data = first
            yield data
            while True:
                version, data = await queue.get()
                if version < 0:
                    if data:
                        yield data
                    return
                if version > seen:
                    seen = version
                    yield data
        finally:
            self._leave(key, tenant, queue)
