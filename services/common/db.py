"""Databases from a URL, and the one way store code talks to them: a transaction function.

Store logic is written once as plain functions of a SQLAlchemy ``Connection`` (``fn(conn) -> T``);
:class:`Database` runs each call in one transaction:

- PostgreSQL: the async engine (asyncpg), the function run with ``AsyncConnection.run_sync`` (SQLAlchemy's
  greenlet bridge: every statement is awaited on the event loop, nothing blocks it).
- SQLite: a sync engine (the stdlib driver) in a small thread pool, one thread hop per transaction.
  (aiosqlite hops threads once per statement, which measured ~6x slower for a 3-statement read.)
  Every connection runs WAL with synchronous=FULL (an acknowledged write survives a power cut) and a
  busy timeout; write transactions open with BEGIN IMMEDIATE so writers queue for the lock up front
  instead of failing a read-to-write upgrade; reads open a plain BEGIN (a WAL snapshot, no waiting).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from sessionkit import reasons
from sessionkit.errors import FieldViolation, InvalidArgument, SessionKitError
from sessionkit_server.common.driver_sql import text_problem
from sessionkit_server.common.group_commit import GroupCommitter
from sessionkit_server.common.pg_reads import CompiledRead, PgReads, pg_state_error

T = TypeVar("T")


def normalize_url(url: str) -> str:
    """Accept the URLs users write (postgresql://, sqlite:///) and pick the drivers we use."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif parsed.drivername in ("sqlite+aiosqlite", "sqlite+pysqlite"):
        parsed = parsed.set(drivername="sqlite")
    return parsed.render_as_string(hide_password=False)


def refuse_unstorable_text(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> None:
    """Every statement's text parameters, before they reach the driver: PostgreSQL's text cannot
    hold NUL (SQLite can) and no store's UTF-8 a lone surrogate, so both are INVALID_ARGUMENT on
    every store, naming the column, instead of a driver error (500) on one and data on the other.
    The services check their fields first with better names (sessionkit_server.common.checks);
    this is the net under every store, direct users (tests/contract) included."""
    rows = parameters if executemany else [parameters]
    for row in rows:
        values = row.items() if isinstance(row, dict) else enumerate(row or ())
        for name, value in values:
            if isinstance(value, str):
                problem = text_problem(value)
                if problem is not None:
                    field = _bind_name(context, name)
                    raise InvalidArgument(
                        f"invalid {field}: {problem}", violations=[FieldViolation(field, problem)]
                    )


def _bind_name(context: Any, name: object) -> str:
    """The column a parameter is bound to: its bind name without SQLAlchemy's ``_1`` suffix."""
    if isinstance(name, int):
        names = getattr(getattr(context, "compiled", None), "positiontup", None) or []
        name = names[name] if name < len(names) else "value"
    return re.sub(r"_\d+$", "", str(name))


class DatabaseLocked(RuntimeError):
    """Another process serves this SQLite database."""


class Database:
    """One database, SQLite or PostgreSQL, behind ``read(fn)`` and ``write(fn)``."""

    def __init__(self, url: str, *, pool_size: int = 10, read_only: bool = False) -> None:
        self.url = normalize_url(url)
        #: SQLite opened read-only (the data directory is on read-only storage): reads answer, every
        #: write fails in SQLite with SQLITE_READONLY, which clients see as STORAGE_READ_ONLY.
        self.read_only = read_only
        self.dialect = make_url(self.url).get_backend_name()
        self._async: AsyncEngine | None = None
        self._writer: Engine | None = None
        self._reader: Engine | None = None
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._lock_file: IO[str] | None = None
        self._pg_reads: PgReads | None = None
        if self.dialect == "postgresql":
            self._async = create_async_engine(self.url, pool_size=pool_size, pool_pre_ping=True)
            self._pg_reads = PgReads(self.url, max_size=pool_size)
            event.listen(self._async.sync_engine, "before_cursor_execute", refuse_unstorable_text)
        elif self.dialect == "sqlite":
            database = make_url(self.url).database
            if not database or database == ":memory:":
                raise ValueError("an in-memory SQLite database cannot be shared by connections; use a file")
            self.path = Path(database).resolve()
            if not read_only:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = self._sqlite_engine("BEGIN IMMEDIATE", pool_size=1)
            self._reader = self._sqlite_engine("BEGIN", pool_size=4)
            # Writers take turns on SQLite's one write lock anyway: one thread and one connection for
            # them, so no reader thread ever waits behind a queued writer.
            self._executors = {
                "write": ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-write"),
                "read": ThreadPoolExecutor(max_workers=4, thread_name_prefix="sqlite-read"),
            }
            # Concurrent writes share one transaction and one fsync (group commit), each in a savepoint.
            self._group = GroupCommitter(self._writer, self._executors["write"])
        else:
            raise ValueError(f"unsupported database {self.dialect!r}: use sqlite:///PATH or postgresql://...")

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    def lock_exclusive(self) -> None:
        """SQLite only: make this process the database's only server (a second one fails clearly)."""
        if self.dialect != "sqlite" or self._lock_file is not None or self.read_only:
            return  # read-only: nothing can be written, so there is nothing to serialize (nor a lock file)
        handle = open(f"{self.path}.lock", "a+")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise DatabaseLocked(f"{self.path} is already served by another sessionkit process") from None
        self._lock_file = handle

    def _read_only_url(self) -> str:
        """The database as a read-only SQLite URI. WAL needs its -shm file, which a read-only directory
        cannot get: with no -wal file left (a clean shutdown checkpointed it) the file is opened
        ``immutable`` (no locks, no -shm); with one, ``mode=ro`` reads it (SQLite uses heap memory for
        the index when -shm cannot be written), so committed writes still in the WAL are seen."""
        wal = self.path.with_name(self.path.name + "-wal")
        mode = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
        return f"sqlite:///file:{quote(str(self.path))}?{mode}&uri=true"

    def _sqlite_engine(self, begin: str, pool_size: int) -> Engine:
        engine = create_engine(
            self._read_only_url() if self.read_only else self.url,
            pool_size=pool_size,
            max_overflow=0,
            connect_args={"check_same_thread": False, "timeout": 30},
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event issues BEGIN itself
            cursor = dbapi_connection.cursor()
            if not self.read_only:  # the journal mode is the file's (a read-only one keeps WAL)
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            connection.exec_driver_sql(begin)

        event.listen(engine, "before_cursor_execute", refuse_unstorable_text)

        return engine

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a read transaction (on SQLite a snapshot that never waits for writers)."""
        return await self._run(fn, self._reader, "read")

    async def read_row(self, read: CompiledRead, params: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The first row of one select (None when it finds none). On PostgreSQL one round trip on
        asyncpg, a prepared statement and no transaction (sessionkit_server.common.pg_reads); on
        SQLite a read transaction like ``read``."""
        if self._pg_reads is None:

            def run(conn: Connection) -> Mapping[str, Any] | None:
                row = conn.execute(read.statement, dict(params)).first()
                return None if row is None else dict(row._mapping)

            return await self.read(run)
        for name, value in params.items():
            # The net the engine's statements get from refuse_unstorable_text.
            problem = text_problem(value) if isinstance(value, str) else None
            if problem is not None:
                raise InvalidArgument(
                    f"invalid {name}: {problem}", violations=[FieldViolation(name, problem)]
                )
        return await self._pg_reads.fetch_one(read, params)

    async def write(self, fn: Callable[[Connection], T], *, solo: bool = False) -> T:
        """Run ``fn`` in a write transaction: committed if it returns, rolled back if it raises.
        On SQLite concurrent writes commit together (sessionkit_server.common.group_commit); their
        effects are those of running them one by one. ``solo``: in a transaction of its own."""
        return await self._run(fn, self._writer, "solo" if solo else "write")

    async def _run(self, fn: Callable[[Connection], T], engine: Engine | None, kind: str) -> T:
        try:
            return await self._transaction(fn, engine, kind)
        except DBAPIError as error:
            typed = storage_error(error)
            if typed is None:
                raise
            raise typed from error
        except OSError as error:
            # PostgreSQL down or restarting: the pool's reconnect fails before any statement ran.
            if not self.is_postgres:
                raise
            raise reasons.DATABASE_UNAVAILABLE.error(detail=_first_line(error)) from error

    async def _transaction(self, fn: Callable[[Connection], T], engine: Engine | None, kind: str) -> T:
        if self._async is not None:
            if kind == "read":
                # No BEGIN/COMMIT round trips around a read: each statement is its own snapshot
                # (reads here are single statements).
                async with self._async.connect() as conn:
                    await conn.execution_options(isolation_level="AUTOCOMMIT")
                    return await conn.run_sync(fn)
            async with self._async.begin() as conn:
                return await conn.run_sync(fn)
        assert engine is not None
        if kind != "read":
            result: T = await self._group.run(fn, solo=kind == "solo")
            return result

        def job() -> T:
            with engine.begin() as conn:
                return fn(conn)

        return await asyncio.get_running_loop().run_in_executor(self._executors[kind], job)

    async def migrate(self, upgrade: Callable[[Connection], None], lock_name: str) -> None:
        """Run ``upgrade(conn)`` (Alembic) once, even when several replicas start together."""

        def run(conn: Connection) -> None:
            if self.is_postgres:
                # One replica migrates; the others wait here, then find nothing to do.
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": lock_name})
            upgrade(conn)

        # Read-only storage: an up-to-date schema needs no write (Alembic only reads its version);
        # one that needs upgrading fails with STORAGE_READ_ONLY.
        await (self.read(run) if self.read_only else self.write(run, solo=True))

    async def close(self) -> None:
        if self._pg_reads is not None:
            await self._pg_reads.close()
        if self._async is not None:
            await self._async.dispose()
        if self._executors:
            # The writer thread's held connection goes back to the pool first (on that thread, after
            # the writes queued before it), so disposing of the engine closes it.
            with contextlib.suppress(RuntimeError):  # the executor is shut down already
                await asyncio.wrap_future(self._executors["write"].submit(self._group.release))
        for engine in (self._writer, self._reader):
            if engine is not None:
                engine.dispose()
        for executor in self._executors.values():
            executor.shutdown(wait=True)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


#: SQLite's primary result codes of a full disk and of read-only storage (the extended codes keep them
#: in their low byte).
_SQLITE_FULL, _SQLITE_READONLY = 13, 8


def _first_line(error: BaseException) -> str:
    lines = str(error).splitlines()
    return (lines[0] if lines else type(error).__name__)[:200]


def storage_error(error: DBAPIError) -> SessionKitError | None:
    """The typed error of a database that cannot take writes (a full disk, read-only storage) or cannot
    be reached (PostgreSQL down or restarting), which clients see as STORAGE_FULL, STORAGE_READ_ONLY or
    DATABASE_UNAVAILABLE (retried) instead of INTERNAL; None for other failures."""
    orig = error.orig
    detail = _first_line(orig) if orig is not None else type(error).__name__
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        if code & 0xFF == _SQLITE_FULL:
            return reasons.STORAGE_FULL.error(detail=detail)
        if code & 0xFF == _SQLITE_READONLY:
            return reasons.STORAGE_READ_ONLY.error(detail=detail)
        return None
    typed = pg_state_error(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None), detail)
    if typed is not None:
        return typed
    if error.connection_invalidated:
        return reasons.DATABASE_UNAVAILABLE.error(detail=detail)
    return None
