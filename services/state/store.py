"""The state store interface. Implementations live beside it (sql_store.py: SQLite and PostgreSQL);
one contract suite (tests/contract/test_state_store_*.py) runs over all of them.

A write is a unit of work: :meth:`StateStore.write` opens a transaction, locks the session (and, on
demand, its user and app scopes), calls the business layer's ``apply(tx)`` with the current values,
and persists what ``apply`` changed together with the new version, a history entry and the
idempotent response (in the shared ledger's table, sessionkit_server.common.idempotency), all in
that one transaction. ``apply`` is plain computation: it runs inside the transaction (on SQLite in
the database thread) and must not do I/O of its own.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from sessionkit.jsonvalues import JsonValue, loads

# Defined once for every service; re-exported for the state store's implementations.
from sessionkit_server.common.identity import SessionKey as SessionKey

JsonObject = dict[str, JsonValue]
T = TypeVar("T")
#: The kinds of write an idempotency key is recorded for (the ledger's ``method``): a key used for one
#: is refused for the other (IDEMPOTENCY_KEY_REUSED), never replayed as the other's response.
STATE_WRITE = "a state write"
EVENT_APPEND = "an event append"
#: Stored responses of idempotent event appends: this prefix and the event's id.
EVENT_RESPONSE_PREFIX = b"event:"


class Operation(enum.IntEnum):
    """Mirrors sessionkit.v1.StateChange.Operation."""

    SNAPSHOT = 1
    SAVE = 2
    SET = 3
    DELETE = 4
    CLEAR = 5
    INCREMENT = 6
    APPEND = 7
    RESTORE = 8


@dataclass
class SessionRecord:
    key: SessionKey
    create_us: int
    update_us: int
    ttl_seconds: int | None
    expire_us: int | None
    version: int
    event_count: int


@dataclass
class VersionRecord:
    version: int
    operation: Operation
    key: str
    value: JsonValue  # the key's new value (SET, INCREMENT, APPEND); None otherwise
    state: JsonObject  # the session's own keys after the write
    time_us: int


@dataclass
class EventRecord:
    id: int
    role: str
    content: str
    author: str
    metadata: JsonObject
    create_us: int


@dataclass
class Change:
    """What the business layer did inside a write, for the history and the watchers."""

    operation: Operation
    key: str = ""
    value: JsonValue = None


class WriteTx(abc.ABC):
    """An open write on one locked session. Mutate the dicts in place; the store persists them."""

    #: The stored response of an earlier state write with the same idempotency key, if any. When
    #: set, nothing may be changed: the caller returns this response as it is. (A key an event
    #: append used is refused before ``apply`` runs.)
    replayed_response: bytes | None
    session: SessionRecord
    state: JsonObject

    @abc.abstractmethod
    def user_state(self) -> JsonObject:
        """The user's scope (``user:`` keys without the prefix), locked for this write."""

    @abc.abstractmethod
    def app_state(self) -> JsonObject:
        """The app's scope (``app:`` keys without the prefix), locked for this write."""

    @property
    def next_version(self) -> int:
        """The version this write creates."""
        return self.session.version + 1

    @abc.abstractmethod
    def commit(self, change: Change, response: bytes) -> None:
        """Mark the write done (``response`` is replayed to repeats of its idempotency key); it is
        persisted when ``apply`` returns."""


@dataclass
class ListPage:
    sessions: list[SessionRecord] = field(default_factory=list)
    next_after: str | None = None


class StateStore(abc.ABC):
    @abc.abstractmethod
    async def start(self) -> None:
        """Create or migrate the schema; the store serves only after this."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def create_session(
        self,
        key: SessionKey,
        ttl_seconds: int | None,
        initial_state: JsonObject | None,
        get_if_exists: bool,
        now_us: int,
    ) -> tuple[SessionRecord, bool]:
        """(record, created). Raises AlreadyExists unless get_if_exists."""

    @abc.abstractmethod
    async def get_session(self, key: SessionKey, now_us: int) -> SessionRecord | None:
        """None when unknown or expired."""

    @abc.abstractmethod
    async def list_sessions(
        self, app_name: str, user_id: str, limit: int, after: str | None, now_us: int
    ) -> ListPage: ...

    @abc.abstractmethod
    async def delete_session(self, key: SessionKey) -> bool: ...

    async def read_state(
        self, key: SessionKey, now_us: int
    ) -> tuple[SessionRecord, JsonObject, JsonObject, JsonObject]:
        """(session, own keys, user scope, app scope). Raises SessionNotFound."""
        record, own, user, app = await self.read_state_text(key, now_us)
        return record, loads(own), loads(user), loads(app)

    @abc.abstractmethod
    async def read_state_text(self, key: SessionKey, now_us: int) -> tuple[SessionRecord, str, str, str]:
        """read_state's objects as their stored JSON texts, unparsed: equal texts are equal states, so
        a reader may reuse what it made of the same texts before (GetState's encoded reply)."""

    @abc.abstractmethod
    async def write(
        self, key: SessionKey, idempotency_key: str, now_us: int, apply: Callable[[WriteTx], T]
    ) -> T:
        """Run ``apply`` on the locked session and persist what it committed, in one transaction.
        An exception from ``apply`` rolls everything back. Raises SessionNotFound."""

    @abc.abstractmethod
    async def list_versions(
        self, key: SessionKey, limit: int, before: int | None, after: int | None = None
    ) -> list[VersionRecord]:
        """Retained versions, newest first (``before``) or oldest first when ``after`` is given."""

    @abc.abstractmethod
    async def get_version(self, key: SessionKey, version: int) -> VersionRecord | None: ...

    @abc.abstractmethod
    async def append_event(
        self, key: SessionKey, event: EventRecord, idempotency_key: str, now_us: int
    ) -> EventRecord:
        """Store the event (id and create_us assigned); a repeated idempotency key returns the first."""

    @abc.abstractmethod
    async def list_events(
        self, key: SessionKey, limit: int, after_id: int, tail: int, author: str
    ) -> list[EventRecord]: ...

    @abc.abstractmethod
    async def reap(self, now_us: int, idempotency_before_us: int) -> int:
        """Delete expired sessions (returns how many) and idempotency records older than the cutoff."""
