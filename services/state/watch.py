"""Watch streams: the current state, then every committed change of a session, woken by this
process's writes (ChangeNotifier) and polling the store for other replicas' writes."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sessionkit.errors import ServiceUnavailable, SessionNotFound
from sessionkit.jsonvalues import JsonValue
from sessionkit_server.common.timestamps import now_us
from sessionkit_server.state.store import JsonObject, Operation, SessionKey

if TYPE_CHECKING:
    from sessionkit_server.state.service import StateService


@dataclass
class ChangeView:
    """One change as a watcher sees it."""

    version: int
    operation: Operation
    key: str
    value: JsonValue
    state: JsonObject
    time_us: int


class ChangeNotifier:
    """Wakes this process's watchers of a session when it changes. Watchers also poll the store, so
    changes written by other replicas arrive too, within ``poll_interval``."""

    def __init__(self) -> None:
        self._waiters: dict[SessionKey, set[asyncio.Event]] = defaultdict(set)

    def notify(self, key: SessionKey) -> None:
        for event in self._waiters.get(key, ()):
            event.set()

    def subscribe(self, key: SessionKey) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters[key].add(event)
        return event

    def notify_all(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    def unsubscribe(self, key: SessionKey, event: asyncio.Event) -> None:
        waiters = self._waiters.get(key)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[key]


async def watch(service: StateService, key: SessionKey, since_version: int = 0) -> AsyncIterator[ChangeView]:
    """The current state, then every change as it is committed, until the session is deleted."""
    waker = service.notifier.subscribe(key)
    try:
        created = (await service.get_session(key)).create_us
        state, version = await service.get_state(key)
        yield ChangeView(version, Operation.SNAPSHOT, "", None, state, now_us())
        last = version
        if 0 < since_version < version:
            last = since_version
        while True:
            changes = await service.store.list_versions(key, 500, None, after=last)
            if changes:
                # Versions are listed by session id: make sure they are still this session's.
                await check_same_session(service, key, created)
            if changes and changes[0].version != last + 1:
                # The watcher fell behind the retained history: resynchronise with a snapshot.
                state, version = await service.get_state(key)
                yield ChangeView(version, Operation.SNAPSHOT, "", None, state, now_us())
                last = version
                continue
            for change in changes:
                yield ChangeView(
                    change.version,
                    change.operation,
                    change.key,
                    change.value,
                    change.state,
                    change.time_us,
                )
                last = change.version
            if changes:
                continue
            waker.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waker.wait(), service.poll_interval)
            if service.closing:
                raise ServiceUnavailable("the server is shutting down: watch again to resume (since_version)")
            # End the stream with NOT_FOUND once the session is deleted, also when a session
            # with the same id was created again meanwhile (its versions are another history).
            await check_same_session(service, key, created)
    finally:
        service.notifier.unsubscribe(key, waker)


async def check_same_session(service: StateService, key: SessionKey, created_us: int) -> None:
    if (await service.get_session(key)).create_us != created_us:
        raise SessionNotFound(f"session {key.session_id!r} was deleted while being watched")
