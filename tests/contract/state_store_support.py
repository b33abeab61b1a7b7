"""What the StateStore contract's modules share: a session key, the clock, and helpers that create
sessions, write through the unit of work and read state, using only the StateStore interface."""

from __future__ import annotations

import time

from sessionkit.jsonvalues import JsonValue
from sessionkit_server.state.store import (
    Change,
    EventRecord,
    JsonObject,
    Operation,
    SessionKey,
    SessionRecord,
    StateStore,
    WriteTx,
)

SECOND = 1_000_000
HISTORY_LIMIT = 20  # what the state_store fixture configures
KEY = SessionKey("app", "alice", "s1")


def now_us() -> int:
    return time.time_ns() // 1000


async def create(
    store: StateStore,
    key: SessionKey = KEY,
    *,
    ttl: int | None = None,
    initial: JsonObject | None = None,
    get_if_exists: bool = False,
    now: int | None = None,
) -> tuple[SessionRecord, bool]:
    return await store.create_session(key, ttl, initial, get_if_exists, now_us() if now is None else now)


async def write_set(
    store: StateStore, key: SessionKey, name: str, value: JsonValue, idem: str = "", now: int | None = None
) -> bytes | None:
    """One SET through the unit of work; returns the replayed response (None when applied)."""

    def apply(tx: WriteTx) -> bytes | None:
        if tx.replayed_response is not None:
            return tx.replayed_response
        tx.state[name] = value
        tx.commit(Change(Operation.SET, name, value), f"v{tx.next_version}".encode())
        return None

    return await store.write(key, idem, now_us() if now is None else now, apply)


def never_called(tx: WriteTx) -> None:
    raise AssertionError(f"apply ran on session {tx.session.key} that should not be writable")


def event(
    content: str, author: str = "", role: str = "user", metadata: JsonObject | None = None
) -> EventRecord:
    return EventRecord(0, role, content, author, metadata or {}, 0)


async def state_of(
    store: StateStore, key: SessionKey = KEY
) -> tuple[int, JsonObject, JsonObject, JsonObject]:
    record, own, user, app = await store.read_state(key, now_us())
    return record.version, own, user, app
