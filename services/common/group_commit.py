"""Group commit for SQLite's one writer: concurrent write transactions share one COMMIT (one fsync).

Writes queue here; the writer thread takes everything queued (up to ``max_batch``) and runs it in one
transaction, each write inside its own SAVEPOINT, then commits once. Each caller is answered only
after that commit returned: an acknowledged write is as durable as with a commit of its own
(``synchronous=FULL``), and a write whose function raises is rolled back to its savepoint alone,
so it fails by itself and the others of its group commit. The writes of a group run one after the
other on one connection, each seeing the ones before it: exactly the effects of running them one
by one (idempotency keys and expected versions included), with the fsync paid once per group.

A lone write runs as before: its own transaction, no savepoint. If the group's transaction is lost
while a write fails (SQLite rolls a transaction back by itself on a full disk or an I/O error), the
writes before it in the group had not been answered yet: they run again in the next group. If the
COMMIT fails, every write of the group fails with that error and none is acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine

#: The most writes one transaction takes: bounds how long a write waits behind its group's others.
MAX_BATCH = 64


@dataclass
class _Job:
    fn: Callable[[Connection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    solo: bool
    result: Any = None
    error: BaseException | None = None
    done: bool = field(default=False)


class _GroupLost(Exception):
    """The group's transaction was rolled back under it: answer what failed, rerun the rest."""


def _deliver(job: _Job) -> None:
    def resolve() -> None:
        if job.future.done():  # the caller was cancelled; the work happened (or not) all the same
            return
        if job.error is not None:
            job.future.set_exception(job.error)
        else:
            job.future.set_result(job.result)

    job.loop.call_soon_threadsafe(resolve)


class GroupCommitter:
    def __init__(self, engine: Engine, executor: Executor, max_batch: int = MAX_BATCH) -> None:
        self._engine = engine
        self._executor = executor
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._pending: list[_Job] = []
        self._draining = False
        #: The writer thread's connection, kept between transactions: checking one out of the pool and
        #: back in (a Connection object, the pool's bookkeeping and reset) cost per transaction about
        #: what a write's statements do. Only the writer thread touches it.
        self._conn: Connection | None = None

    def _connection(self) -> Connection:
        conn = self._conn
        if conn is None or conn.closed or conn.invalidated:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            conn = self._conn = self._engine.connect()
        return conn

    def release(self) -> None:
        """Give the held connection back to the pool (on the writer thread: close() runs this there
        before the engine is disposed)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A write transaction on the held connection: committed if the block returns, rolled back if
        it raises. After a failure the connection goes back to the pool, whose reset rolls back what
        SQLite may still hold open (a COMMIT that failed leaves its transaction open), and the next
        transaction takes one afresh."""
        conn = self._connection()
        try:
            with conn.begin():
                yield conn
        except BaseException:
            with contextlib.suppress(Exception):
                self.release()
            raise

    async def run(self, fn: Callable[[Connection], Any], solo: bool = False) -> Any:
        """Run ``fn`` in a write transaction shared with concurrent writes (``solo``: alone)."""
        loop = asyncio.get_running_loop()
        job = _Job(fn, loop.create_future(), loop, solo)
        with self._lock:
            self._pending.append(job)
            start = not self._draining
            self._draining = True
        if start:
            try:
                self._executor.submit(self._drain)
            except RuntimeError:  # the executor is shut down (the database closed): refuse, as before
                with self._lock:
                    self._pending.remove(job)
                    self._draining = False
                raise
        return await job.future

    def _next_batch(self) -> list[_Job]:
        with self._lock:
            if not self._pending:
                self._draining = False
                return []
            first = self._pending[0]
            if first.solo:
                take = 1
            else:
                take = 0
                while take < min(len(self._pending), self._max_batch) and not self._pending[take].solo:
                    take += 1
            batch, self._pending = self._pending[:take], self._pending[take:]
            return batch

    def _requeue(self, jobs: list[_Job]) -> None:
        with self._lock:
            self._pending[:0] = jobs

    def _drain(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                return
            try:
                self._commit(batch)
            except BaseException as error:
                for job in batch:
                    if not job.done:
                        job.error, job.done = error, True
            for job in batch:
                if job.done:
                    _deliver(job)

    def _commit(self, batch: list[_Job]) -> None:
        if len(batch) == 1:
            job = batch[0]
            try:
                with self._transaction() as conn:
                    job.result = job.fn(conn)
            except BaseException as error:
                job.error = error
            job.done = True
            return
        ran: list[_Job] = []
        try:
            with self._transaction() as conn:
                raw: Any = conn.connection.dbapi_connection
                for i, job in enumerate(batch):
                    # Savepoints on the driver connection: SQLAlchemy's nested transactions cost
                    # more than the writes they wrap.
                    raw.execute("SAVEPOINT sk_group")
                    try:
                        job.result = job.fn(conn)
                    except BaseException as error:
                        job.error = error
                        if not (raw.in_transaction and _rolled_back(raw)):
                            job.done = True
                            self._requeue([j for j in ran if j.error is None] + batch[i + 1 :])
                            raise _GroupLost from error
                    else:
                        raw.execute("RELEASE sk_group")
                    ran.append(job)
        except _GroupLost:
            for job in ran:  # the writes that failed alone are answered; the rest were requeued
                job.done = job.error is not None
            return
        except BaseException as error:
            for job in batch:
                job.error = job.error or error
                job.done = True
            return
        for job in batch:
            job.done = True


def _rolled_back(raw: Any) -> bool:
    """Roll a failed write back to its savepoint; False when that is impossible (group lost)."""
    try:
        raw.execute("ROLLBACK TO sk_group")
        raw.execute("RELEASE sk_group")
    except Exception:
        return False
    return True
