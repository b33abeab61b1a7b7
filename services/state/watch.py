"""Watch streams: the current state, then every committed change of a session, woken by this
process's writes and polling the store for other replicas' writes.

A write's cost does not depend on its watchers: it bumps one counter and sets one event per session
(SessionFeed.notify), and the store is read once per wake-up for all the session's watchers in this
process (SessionFeed.read), not once per watcher (200 idle SSE watchers of one session made each of
them query the store twice per write: writes went from 16 ms to 500 ms p50). Polling for other
replicas' writes is once per poll interval per session, not per watcher.

Watchers are capped per session and per tenant (StateLimits.max_watchers_per_session/_per_tenant):
the next watch is refused with RESOURCE_EXHAUSTED (TOO_MANY_WATCHERS) instead of costing the server
a stream it cannot afford. The tenant is the app name's part before ':' (what API keys assign).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sessionkit.errors import ServiceUnavailable, SessionNotFound
from sessionkit.jsonvalues import JsonValue
from sessionkit_server.common.timestamps import now_us
from sessionkit_server.common.watchers import tenant_of, too_many_watchers
from sessionkit_server.state.store import JsonObject, Operation, SessionKey, VersionRecord

if TYPE_CHECKING:
    from sessionkit_server.state.service import StateService

#: Versions read per store query.
PAGE = 500


@dataclass
class ChangeView:
    """One change as a watcher sees it. Shared by every watcher of the session that reads it, so an
    adapter may keep its encoding of the change in ``encoded`` (encoded once, sent to each)."""

    version: int
    operation: Operation
    key: str
    value: JsonValue
    state: JsonObject
    time_us: int
    encoded: object = field(default=None, compare=False, repr=False)


@dataclass
class _Read:
    """One read of the store for a session's watchers: its changes after ``after`` and the session's
    create time (None: the session is gone)."""

    generation: int
    after: int
    changes: list[ChangeView]
    created_us: int | None


class SessionFeed:
    """One session's watchers in this process: one wake-up event for all, and one store read per
    wake-up shared by all of them."""

    def __init__(self) -> None:
        self.watchers = 0
        #: Bumped by every local write and every poll tick: a watcher needs a read at least this new.
        self.generation = 0
        self.wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._last: _Read | None = None
        self._polled = time.monotonic()

    def notify(self) -> None:
        """A write committed: O(1) whatever the number of watchers."""
        self.generation += 1
        event, self.wake = self.wake, asyncio.Event()
        event.set()

    def poll(self, interval: float) -> None:
        """A watcher waited ``interval`` without a wake-up: read again (for other replicas' writes),
        once per interval for the session, however many watchers time out."""
        now = time.monotonic()
        # (A little under the interval: a timer may fire a hair early, and a missed tick costs a whole
        # interval more for another replica's write to arrive.)
        if now - self._polled >= interval * 0.9:
            self._polled = now
            self.generation += 1

    async def read(self, after: int, fetch: Callable[[int], Awaitable[_Read]]) -> _Read:
        """The changes after ``after``: the last read's if it is fresh and covers them, else a new one."""
        wanted = self.generation
        async with self._lock:
            last = self._last
            if last is not None and last.generation >= wanted and last.after <= after:
                changes = [c for c in last.changes if c.version > after]
                if changes or len(last.changes) < PAGE:
                    return _Read(last.generation, after, changes, last.created_us)
            generation = self.generation
            read = await fetch(after)
            read.generation = generation
            self._last = read
            return read


class ChangeNotifier:
    """The feeds of the sessions watched in this process, with the watcher caps."""

    def __init__(self, max_per_session: int = 100, max_per_tenant: int = 1000) -> None:
        self.max_per_session = max_per_session
        self.max_per_tenant = max_per_tenant
        self._feeds: dict[SessionKey, SessionFeed] = {}
        self._tenants: Counter[str] = Counter()

    def notify(self, key: SessionKey) -> None:
        feed = self._feeds.get(key)
        if feed is not None:
            feed.notify()

    def notify_all(self) -> None:
        for feed in self._feeds.values():
            feed.notify()

    def subscribe(self, key: SessionKey) -> SessionFeed:
        """Count a new watcher of ``key`` (refused with TOO_MANY_WATCHERS over a cap)."""
        feed = self._feeds.get(key)
        watching = feed.watchers if feed is not None else 0
        if watching >= self.max_per_session:
            raise too_many_watchers(f"session {key.session_id!r}", watching, self.max_per_session, "SESSION")
        tenant = tenant_of(key.app_name)
        if self._tenants[tenant] >= self.max_per_tenant:
            raise too_many_watchers(
                f"tenant {tenant!r}", self._tenants[tenant], self.max_per_tenant, "TENANT"
            )
        if feed is None:
            feed = self._feeds[key] = SessionFeed()
        feed.watchers += 1
        self._tenants[tenant] += 1
        return feed

    def unsubscribe(self, key: SessionKey, feed: SessionFeed) -> None:
        feed.watchers -= 1
        tenant = tenant_of(key.app_name)
        self._tenants[tenant] -= 1
        if self._tenants[tenant] <= 0:
            del self._tenants[tenant]
        if feed.watchers <= 0 and self._feeds.get(key) is feed:
            del self._feeds[key]


async def watch(service: StateService, key: SessionKey, since_version: int = 0) -> AsyncIterator[ChangeView]:
    """The current state, then every change as it is committed, until the session is deleted."""
    feed = service.notifier.subscribe(key)

    async def fetch(after: int) -> _Read:
        record = await service.store.get_session(key, now_us())
        if record is None:
            return _Read(0, after, [], None)
        versions = await service.store.list_versions(key, PAGE, None, after=after)
        return _Read(0, after, [_view(v) for v in versions], record.create_us)

    try:
        created = (await service.get_session(key)).create_us
        state, version = await service.get_state(key)
        yield ChangeView(version, Operation.SNAPSHOT, "", None, state, now_us())
        last = version
        if 0 < since_version < version:
            last = since_version
        while True:
            wake = feed.wake  # taken before the read, so a write during it is not missed
            read = await feed.read(last, fetch)
            # Versions are listed by session id: end the stream with NOT_FOUND once the session is
            # deleted, also when one with the same id was created again (its versions are another history).
            if read.created_us != created:
                raise SessionNotFound(f"session {key.session_id!r} was deleted while being watched")
            changes = read.changes
            if changes and changes[0].version != last + 1:
                # The watcher fell behind the retained history: resynchronise with a snapshot.
                state, version = await service.get_state(key)
                yield ChangeView(version, Operation.SNAPSHOT, "", None, state, now_us())
                last = version
                continue
            for change in changes:
                yield change
                last = change.version
            if changes:
                continue
            try:
                async with asyncio.timeout(service.poll_interval):
                    await wake.wait()
            except TimeoutError:
                feed.poll(service.poll_interval)
            if service.closing:
                raise ServiceUnavailable("the server is shutting down: watch again to resume (since_version)")
    finally:
        service.notifier.unsubscribe(key, feed)


def _view(change: VersionRecord) -> ChangeView:
    c = change
    return ChangeView(c.version, c.operation, c.key, c.value, c.state, c.time_us)
