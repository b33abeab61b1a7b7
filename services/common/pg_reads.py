"""PostgreSQL's hot single-statement reads straight on asyncpg, beside the SQLAlchemy engine.

Why: a read through the engine costs a pool pre-ping (a round trip), the greenlet bridge and
SQLAlchemy's result processing around the one round trip that matters; on the state service's
get_state that was most of the time above a bare gRPC echo. Here a read is one round trip: the
statement (a SQLAlchemy Core select, compiled once to PostgreSQL's ``$n`` text) is prepared once per
connection by asyncpg's statement cache and then only bound and executed, outside any transaction
(autocommit: one statement is its own snapshot).

Nothing is cached across calls, so every read sees every write committed before it started, by any
replica: freshness needs no invalidation.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from typing import Any

import asyncpg
from sqlalchemy import Select
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import make_url

from sessionkit import reasons
from sessionkit.errors import SessionKitError

_DIALECT = PGDialect_asyncpg(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]


class CompiledRead:
    """A select with bound parameters, and its text compiled once for PostgreSQL with the
    parameters' names in ``$n`` order."""

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement
        compiled = statement.compile(dialect=_DIALECT)
        self.sql = str(compiled)
        self.names: list[str] = list(compiled.positiontup or [])

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[name] for name in self.names]


class PgReads:
    """asyncpg connections for single-statement reads, opened on demand up to ``max_size``.

    A free list instead of asyncpg's Pool: its acquire and release (a task and a reset round trip per
    call, or bookkeeping when the reset is skipped) cost about as much as the read itself. A
    connection whose read failed or was cancelled is closed, never reused (its protocol state is
    unknown); a read is retried once on a new connection when the old one had died in the list
    (PostgreSQL restarted), as the engine's pre-ping would have reconnected."""

    def __init__(self, url: str, max_size: int) -> None:
        self._dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._max_size = max_size
        self._idle: list[asyncpg.Connection] = []
        self._size = 0
        self._waiters: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        self._closed = False

    async def _acquire(self) -> asyncpg.Connection:
        while True:
            while self._idle:
                conn = self._idle.pop()
                if not conn.is_closed():
                    return conn
                self._size -= 1
            if self._size < self._max_size:
                self._size += 1
                try:
                    conn = await asyncpg.connect(self._dsn)
                except BaseException:
                    self._size -= 1
                    self._wake(None)
                    raise
                return conn
            waiter: asyncio.Future[asyncpg.Connection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                handed = await waiter  # None: a slot freed up, go round and open a connection
            except asyncio.CancelledError:
                # Cancelled after a connection (or a free slot) was handed over: pass it on.
                if waiter.done() and not waiter.cancelled():
                    given = waiter.result()
                    if given is not None:
                        self._release(given, healthy=True)
                    else:
                        self._wake(None)
                raise
            if handed is not None:
                return handed

    def _wake(self, conn: asyncpg.Connection | None) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def _release(self, conn: asyncpg.Connection, healthy: bool) -> None:
        if healthy and not self._closed and not conn.is_closed():
            if not self._wake(conn):
                self._idle.append(conn)
            return
        conn.terminate()
        self._size -= 1
        self._wake(None)

    async def fetch_one(self, read: CompiledRead, params: Mapping[str, Any]) -> Mapping[str, Any] | None:
        args = read.args(params)
        for attempt in (1, 2):
            conn = await self._acquire_typed()
            healthy = False
            try:
                row: Mapping[str, Any] | None = await conn.fetchrow(read.sql, *args)
                healthy = True
                return row
            except (asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError, OSError) as error:
                if attempt == 2:
                    raise reasons.DATABASE_UNAVAILABLE.error(detail=_first_line(error)) from error
            except asyncpg.PostgresError as error:
                typed = typed_pg_error(error)
                if typed is None:
                    raise
                raise typed from error
            finally:
                self._release(conn, healthy)
        raise AssertionError("unreachable")

    async def _acquire_typed(self) -> asyncpg.Connection:
        try:
            return await self._acquire()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            typed = typed_pg_error(error) if isinstance(error, asyncpg.PostgresError) else None
            raise (typed or reasons.DATABASE_UNAVAILABLE.error(detail=_first_line(error))) from error

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            self._size -= 1
            await conn.close()


def _first_line(error: BaseException) -> str:
    lines = str(error).splitlines()
    return (lines[0] if lines else type(error).__name__)[:200]


#: PostgreSQL's SQLSTATEs: class 53 (insufficient resources: disk full, out of memory) and a read-only
#: transaction (a standby, default_transaction_read_only).
_PG_RESOURCES, _PG_READ_ONLY = "53", "25006"
#: A connection lost or refused: class 08, and a server shutting down or starting (admin_shutdown,
#: crash_shutdown, cannot_connect_now).
_PG_CONNECTION, _PG_GOING_AWAY = "08", frozenset({"57P01", "57P02", "57P03"})


def pg_state_error(state: object, detail: str) -> SessionKitError | None:
    """The typed error of a PostgreSQL SQLSTATE that clients see as STORAGE_FULL, STORAGE_READ_ONLY
    or DATABASE_UNAVAILABLE (retried) instead of INTERNAL; None for other states."""
    if not isinstance(state, str):
        return None
    if state.startswith(_PG_RESOURCES):
        return reasons.STORAGE_FULL.error(detail=detail)
    if state == _PG_READ_ONLY:
        return reasons.STORAGE_READ_ONLY.error(detail=detail)
    if state.startswith(_PG_CONNECTION) or state in _PG_GOING_AWAY:
        return reasons.DATABASE_UNAVAILABLE.error(detail=detail)
    return None


def typed_pg_error(error: asyncpg.PostgresError) -> SessionKitError | None:
    """The same typing as the engine's errors get (sessionkit_server.common.db.storage_error)."""
    return pg_state_error(getattr(error, "sqlstate", None), _first_line(error))
