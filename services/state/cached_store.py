"""A read cache in front of a state store that this process owns alone (the embedded SQLite store,
whose file lock keeps every other server out). Reads of cached sessions cost no database trip.

Correct without any cross-process signal because every write goes through this object: a write
drops the entries it may change, and a read fills the cache only when no write started or ended
while it was reading (a generation counter), so a slow read never puts back a stale value. Never use
it in front of a store that other processes write (PostgreSQL with several replicas).
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

from sessionkit_server.state.store import (
    EventRecord,
    JsonObject,
    ListPage,
    SessionKey,
    SessionRecord,
    StateStore,
    VersionRecord,
    WriteTx,
)

T = TypeVar("T")
#: (session, own keys, user scope, app scope), the scopes as their JSON texts.
_Entry = tuple[SessionRecord, str, str, str]


class CachingStateStore(StateStore):
    def __init__(self, inner: StateStore, max_sessions: int = 10_000) -> None:
        self.inner = inner
        self.max_sessions = max_sessions
        # Entries hold JSON text, parsed on every hit (callers get objects of their own), or handed
        # out as text to a reader that reuses its work on equal texts (read_state_text).
        self._sessions: OrderedDict[SessionKey, tuple[SessionRecord, str]] = OrderedDict()
        self._users: dict[tuple[str, str], str] = {}
        self._apps: dict[str, str] = {}
        # How many cached sessions use each scope entry: a scope leaves with its last session.
        self._user_refs: Counter[tuple[str, str]] = Counter()
        self._app_refs: Counter[str] = Counter()
        self._generation = 0
        self._writing = 0

    # -- cache bookkeeping ----------------------------------------------------------------------------

    def _drop_session(self, key: SessionKey) -> None:
        if self._sessions.pop(key, None) is None:
            return
        user = (key.app_name, key.user_id)
        self._user_refs[user] -= 1
        if self._user_refs[user] <= 0:
            del self._user_refs[user]
            self._users.pop(user, None)
        self._app_refs[key.app_name] -= 1
        if self._app_refs[key.app_name] <= 0:
            del self._app_refs[key.app_name]
            self._apps.pop(key.app_name, None)

    def _forget(self, key: SessionKey | None) -> None:
        """Drop what a write to ``key`` may have changed (everything when ``key`` is None)."""
        if key is None:
            for cached in list(self._sessions):
                self._drop_session(cached)
            return
        self._drop_session(key)
        self._users.pop((key.app_name, key.user_id), None)
        self._apps.pop(key.app_name, None)

    async def _guard(self, key: SessionKey | None, write: Awaitable[T]) -> T:
        """Await a write with the cache fenced: no read fills it meanwhile; ``key``'s entries dropped
        (every entry when ``key`` is None). The fence stays up until the database work is really done,
        also when the caller is cancelled meanwhile (the SQLite thread still commits)."""
        self._writing += 1
        self._generation += 1
        task = asyncio.ensure_future(write)

        def done(_: asyncio.Future[T]) -> None:
            self._writing -= 1
            self._generation += 1
            self._forget(key)

        task.add_done_callback(done)
        return await asyncio.shield(task)

    def _fill(self, generation: int, entry: _Entry) -> None:
        if self._writing or generation != self._generation:
            return
        record, own, user, app = entry
        key = record.key
        if key not in self._sessions:
            self._user_refs[(key.app_name, key.user_id)] += 1
            self._app_refs[key.app_name] += 1
        self._sessions[key] = (record, own)
        self._sessions.move_to_end(key)
        self._users[(key.app_name, key.user_id)] = user
        self._apps[key.app_name] = app
        while len(self._sessions) > self.max_sessions:
            self._drop_session(next(iter(self._sessions)))

    def _cached(self, key: SessionKey, now_us: int) -> _Entry | None:
        hit = self._sessions.get(key)
        user = self._users.get((key.app_name, key.user_id))
        app = self._apps.get(key.app_name)
        if hit is None or user is None or app is None:
            return None
        record, own = hit
        if record.expire_us is not None and record.expire_us <= now_us:
            return None
        self._sessions.move_to_end(key)
        return replace(record), own, user, app

    # -- reads ------------------------------------------------------------------------------------------

    async def read_state_text(self, key: SessionKey, now_us: int) -> tuple[SessionRecord, str, str, str]:
        hit = self._cached(key, now_us)
        if hit is not None:
            return hit
        generation = self._generation
        entry = await self.inner.read_state_text(key, now_us)
        self._fill(generation, entry)
        return entry

    async def get_session(self, key: SessionKey, now_us: int) -> SessionRecord | None:
        hit = self._cached(key, now_us)
        if hit is not None:
            return hit[0]
        return await self.inner.get_session(key, now_us)

    async def list_sessions(
        self, app_name: str, user_id: str, limit: int, after: str | None, now_us: int
    ) -> ListPage:
        return await self.inner.list_sessions(app_name, user_id, limit, after, now_us)

    async def list_versions(
        self, key: SessionKey, limit: int, before: int | None, after: int | None = None
    ) -> list[VersionRecord]:
        return await self.inner.list_versions(key, limit, before, after)

    async def get_version(self, key: SessionKey, version: int) -> VersionRecord | None:
        return await self.inner.get_version(key, version)

    async def list_events(
        self, key: SessionKey, limit: int, after_id: int, tail: int, author: str
    ) -> list[EventRecord]:
        return await self.inner.list_events(key, limit, after_id, tail, author)

    # -- writes -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def create_session(
        self,
        key: SessionKey,
        ttl_seconds: int | None,
        initial_state: JsonObject | None,
        get_if_exists: bool,
        now_us: int,
    ) -> tuple[SessionRecord, bool]:
        return await self._guard(
            key, self.inner.create_session(key, ttl_seconds, initial_state, get_if_exists, now_us)
        )

    async def delete_session(self, key: SessionKey) -> bool:
        return await self._guard(key, self.inner.delete_session(key))

    async def write(
        self, key: SessionKey, idempotency_key: str, now_us: int, apply: Callable[[WriteTx], T]
    ) -> T:
        return await self._guard(key, self.inner.write(key, idempotency_key, now_us, apply))

    async def append_event(
        self, key: SessionKey, event: EventRecord, idempotency_key: str, now_us: int
    ) -> EventRecord:
        return await self._guard(key, self.inner.append_event(key, event, idempotency_key, now_us))

    async def reap(self, now_us: int, idempotency_before_us: int) -> int:
        return await self._guard(None, self.inner.reap(now_us, idempotency_before_us))
