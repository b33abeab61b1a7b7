"""Idempotency keys, once for every service: claim, complete, replay and expiry on one table shape.

A write with a key stores its serialized response in the write's own transaction; a repeat of the key
(same app, user and scope, within 24 hours) gets that response back (:class:`Replayed`) and writes
nothing. A call made of several transactions (an LLM extraction, an agent turn) *claims* the key first
(a row with no response), then completes it with its response or releases it when it failed.

Every service's table has the shape of :func:`idempotency_table` (``scope`` is "" for a key that belongs
to the user, the session id for one that belongs to a session), and every service migrates to it with
sessionkit_server.common.idempotency_migration."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message as ProtoMessage
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    delete,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.schema import SchemaItem

from sessionkit import reasons
from sessionkit.errors import FailedPrecondition, FieldViolation, InvalidArgument
from sessionkit_server.common import checks
from sessionkit_server.common.db import Database

#: How long the response of an idempotent write is kept (and replayed).
IDEMPOTENCY_TTL_US = 24 * 3600 * 1_000_000
MAX_KEY_LENGTH = 128

R = TypeVar("R")
S = TypeVar("S")
T = TypeVar("T")


def idempotency_columns(name: str) -> list[SchemaItem]:
    """The columns of an idempotency table named ``name`` (fresh objects: a table and a migration
    each need their own)."""
    return [
        Column("app_name", String(128), nullable=False),
        Column("user_id", String(128), nullable=False),
        # "" for a key of the user (memory, knowledge), the session id for a key of a session (agent).
        Column("scope", String(128), nullable=False),
        Column("key", String(MAX_KEY_LENGTH), nullable=False),
        # The RPC that used the key (a key reused for another RPC is refused).
        Column("method", String(32), nullable=False),
        # The serialized response; NULL while a claim is in flight.
        Column("response", LargeBinary, nullable=True),
        Column("create_us", BigInteger, nullable=False),
        # Named, so the migration that rebuilds an older table can create it beside the old one.
        PrimaryKeyConstraint("app_name", "user_id", "scope", "key", name=f"pk_{name}"),
    ]


def idempotency_table(metadata: MetaData, name: str) -> Table:
    """The one shape of an idempotency table."""
    return Table(name, metadata, *idempotency_columns(name), Index(f"ix_{name}_time", "create_us"))


@dataclass(frozen=True)
class KeySpace:
    """Whose keys: a user's (scope "") or one session's."""

    app_name: str
    user_id: str
    scope: str = ""


@dataclass(frozen=True)
class Idempotency(Generic[R]):
    """The idempotency key of a write, the RPC it belongs to, and how to serialize the write's response
    from its result. ``encode`` runs inside the write's transaction, so the response is stored
    atomically with the write it describes."""

    key: str
    method: str
    encode: Callable[[R], bytes]

    def before(self, convert: Callable[[S], R]) -> Idempotency[S]:
        """The same key for a step whose result ``convert`` turns into this write's result."""
        encode = self.encode
        return Idempotency(self.key, self.method, lambda value: encode(convert(value)))


def then(idem: Idempotency[R] | None, convert: Callable[[S], R]) -> Idempotency[S] | None:
    """:meth:`Idempotency.before`, passing None through."""
    return None if idem is None else idem.before(convert)


class Replayed(Exception):
    """The write was already made with this idempotency key: ``response`` is its first response."""

    def __init__(self, response: bytes) -> None:
        super().__init__("idempotent replay")
        self.response = response


class KeyTaken(Exception):
    """A concurrent write recorded the same key first (its transaction committed before ours)."""


class Status(Enum):
    FREE = "free"  # unused, or its record expired
    DONE = "done"  # holds a response
    RUNNING = "running"  # claimed, no response yet


@dataclass(frozen=True)
class KeyState:
    status: Status
    response: bytes | None = None
    #: When a running claim was taken (microseconds).
    create_us: int = 0


def check_key(key: str) -> str:
    """Refuse a key the table cannot hold, naming the field."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidArgument(
            "invalid idempotency_key",
            violations=[FieldViolation("idempotency_key", f"1 to {MAX_KEY_LENGTH} characters")],
        )
    return checks.text(key, "idempotency_key")


def key_reused(key: str, first_use: str, method: str) -> FailedPrecondition:
    """The one IDEMPOTENCY_KEY_REUSED error: ``key`` was first used for ``first_use`` (an RPC, or a
    kind of write), and now for ``method``. Metadata: the key and its first use."""
    return reasons.IDEMPOTENCY_KEY_REUSED.error(
        key=key[:64],
        first_use=first_use,
        method=method,
        metadata={"idempotency_key": key[:MAX_KEY_LENGTH], "method": first_use},
    )


def key_state(row: Any | None, key: str, method: str, now_us: int) -> KeyState:
    """Where ``key`` stands for a call of ``method``, from its record (a row with ``method``,
    ``response`` and ``create_us``; None when there is none): a store that reads the record within a
    query of its own (state joins it into its session lock) decides here, as the ledger does."""
    if row is None or row.method is None or row.create_us < now_us - IDEMPOTENCY_TTL_US:
        return KeyState(Status.FREE)
    if row.method != method:
        raise key_reused(key, first_use=row.method, method=method)
    if row.response is not None:
        return KeyState(Status.DONE, bytes(row.response))
    return KeyState(Status.RUNNING, create_us=row.create_us)


class IdempotencyLedger:
    """The keys of one service's table. The ``*_in`` methods run inside a caller's transaction; the
    others are whole transactions on ``db``.

    ``claim_lease_us``: a claim older than this whose call never finished (the server stopped) is
    refused as abandoned (its effects are unknown); None: a claim runs until its record expires."""

    def __init__(self, db: Database, table: Table, claim_lease_us: int | None = None) -> None:
        self.db = db
        self.table = table
        self.claim_lease_us = claim_lease_us

    def _where(self, space: KeySpace, key: str) -> list[Any]:
        c = self.table.c
        return [
            c.app_name == space.app_name,
            c.user_id == space.user_id,
            c.scope == space.scope,
            c.key == key,
        ]

    # -- inside a transaction -------------------------------------------------------------------------

    def lock_in(self, conn: Connection, space: KeySpace, key: str) -> None:
        """Serialize every writer of this key until the transaction ends: a PostgreSQL advisory lock
        (SQLite has one writer at a time), so a concurrent repeat waits for the first, then replays."""
        if conn.dialect.name == "postgresql":
            conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))"),
                {"name": "\x1f".join((self.table.name, space.app_name, space.user_id, space.scope, key))},
            )

    def state_in(self, conn: Connection, space: KeySpace, key: str, method: str, now_us: int) -> KeyState:
        """Where ``key`` stands for a call of ``method`` (``key_reused`` when another RPC used it)."""
        c = self.table.c
        row = conn.execute(select(c.method, c.response, c.create_us).where(*self._where(space, key))).first()
        return key_state(row, key, method, now_us)

    def check_in(
        self, conn: Connection, space: KeySpace, key: str, method: str, now_us: int, lock: bool = True
    ) -> None:
        """Return when the key is free; raise :class:`Replayed` when it holds a response, and a
        retryable ``ServiceUnavailable`` while a claim on it is running (``FailedPrecondition`` when
        that claim was abandoned)."""
        if lock:
            self.lock_in(conn, space, key)
        state = self.state_in(conn, space, key, method, now_us)
        if state.status is Status.FREE:
            return
        if state.response is not None:
            raise Replayed(state.response)
        if self.claim_lease_us is not None and state.create_us < now_us - self.claim_lease_us:
            raise reasons.IDEMPOTENCY_KEY_ABANDONED.error(
                method=method, key=key, metadata={"idempotency_key": key}
            )
        raise reasons.IDEMPOTENCY_KEY_IN_PROGRESS.error(
            method=method, key=key, metadata={"idempotency_key": key}, retry_after=1.0
        )

    def record_in(
        self, conn: Connection, space: KeySpace, key: str, method: str, response: bytes | None, now_us: int
    ) -> None:
        """Store the key's response (None: a claim). Raises :class:`KeyTaken` when a concurrent
        transaction stored it first."""
        c = self.table.c
        # A record older than 24 hours is over: the key may be used again.
        conn.execute(
            delete(self.table).where(*self._where(space, key), c.create_us < now_us - IDEMPOTENCY_TTL_US)
        )
        self.insert_in(conn, space, key, method, response, now_us)

    def insert_in(
        self, conn: Connection, space: KeySpace, key: str, method: str, response: bytes | None, now_us: int
    ) -> None:
        """:meth:`record_in` for a caller that knows no record of the key is left (not even an expired
        one): the insert alone."""
        try:
            conn.execute(
                insert(self.table).values(
                    app_name=space.app_name,
                    user_id=space.user_id,
                    scope=space.scope,
                    key=key,
                    method=method,
                    response=response,
                    create_us=now_us,
                )
            )
        except IntegrityError as error:
            raise KeyTaken from error

    def complete_in(self, conn: Connection, space: KeySpace, key: str, response: bytes) -> None:
        conn.execute(update(self.table).where(*self._where(space, key)).values(response=response))

    def release_in(self, conn: Connection, space: KeySpace, key: str) -> None:
        conn.execute(delete(self.table).where(*self._where(space, key), self.table.c.response.is_(None)))

    # -- whole transactions ---------------------------------------------------------------------------

    async def write(
        self,
        space: KeySpace,
        idem: Idempotency[T] | None,
        now_us: int,
        run: Callable[[Connection], T],
    ) -> T:
        """Run the write ``run`` in one transaction; with a key, check the key first and store the
        response in the same transaction (a repeat raises :class:`Replayed` and writes nothing)."""
        if idem is None:
            return await self.db.write(run)

        def idempotent(conn: Connection) -> T:
            self.check_in(conn, space, idem.key, idem.method, now_us)
            result = run(conn)
            self.record_in(conn, space, idem.key, idem.method, idem.encode(result), now_us)
            return result

        try:
            return await self.db.write(idempotent)
        except KeyTaken:
            # A concurrent write with this key committed first (ours was rolled back): replay it.
            await self.replay(space, idem.key, idem.method, now_us)
            raise

    async def remember(self, space: KeySpace, idem: Idempotency[T], result: T, now_us: int) -> None:
        """Store the response of a write that changed nothing (an exact duplicate, a missing row
        deleted with allow_missing), so its repeats answer the same. Raises :class:`Replayed` when the
        key was used meanwhile."""
        await self.write(space, idem, now_us, lambda conn: result)

    async def replay(self, space: KeySpace, key: str, method: str, now_us: int) -> None:
        """Raise :class:`Replayed` when ``key`` holds a response (a read; the fast path of a repeat)."""

        def run(conn: Connection) -> None:
            self.check_in(conn, space, key, method, now_us, lock=False)

        await self.db.read(run)

    async def claim(self, space: KeySpace, key: str, method: str, now_us: int) -> None:
        """Take ``key`` for a call made of several transactions: completed by :meth:`complete` or
        dropped by :meth:`release`. Raises as :meth:`check_in` when the key is not free."""

        def run(conn: Connection) -> None:
            self.check_in(conn, space, key, method, now_us)
            self.record_in(conn, space, key, method, None, now_us)

        try:
            await self.db.write(run)
        except KeyTaken:
            await self.replay(space, key, method, now_us)
            raise

    async def try_claim(self, space: KeySpace, key: str, method: str, now_us: int) -> KeyState:
        """:meth:`claim` that answers instead of raising: FREE means this call now holds the key."""

        def run(conn: Connection) -> KeyState:
            self.lock_in(conn, space, key)
            state = self.state_in(conn, space, key, method, now_us)
            if state.status is Status.FREE:
                self.record_in(conn, space, key, method, None, now_us)
            return state

        try:
            return await self.db.write(run)
        except KeyTaken:
            return KeyState(Status.RUNNING)

    async def complete(self, space: KeySpace, key: str, response: bytes) -> None:
        await self.db.write(lambda conn: self.complete_in(conn, space, key, response))

    async def release(self, space: KeySpace, key: str) -> None:
        """Drop a claim whose call failed before writing anything (a retry may then run it)."""
        await self.db.write(lambda conn: self.release_in(conn, space, key))

    async def purge(self, now_us: int) -> int:
        """Delete the records older than 24 hours; returns how many."""

        def run(conn: Connection) -> int:
            gone = conn.execute(
                delete(self.table).where(self.table.c.create_us < now_us - IDEMPOTENCY_TTL_US)
            )
            return int(gone.rowcount or 0)

        return await self.db.write(run)


M = TypeVar("M", bound=ProtoMessage)


async def idempotent(
    key: str,
    method: str,
    response_type: type[M],
    respond: Callable[[R], M],
    write: Callable[[Idempotency[R] | None], Awaitable[R]],
) -> M:
    """A servicer's idempotent RPC: run ``write`` with the request's key (none when empty), its
    response message stored with the write; a repeat of the key answers that stored response."""
    idem: Idempotency[R] | None = (
        Idempotency(key, method, lambda result: respond(result).SerializeToString()) if key else None
    )
    try:
        return respond(await write(idem))
    except Replayed as replay:
        return response_type.FromString(replay.response)
