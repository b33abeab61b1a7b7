"""The vector outbox, once for every service that keeps vectors (memory, knowledge).

The rows in the database are the source of truth; the vector index is derived from them. A write
queues an outbox entry in its own transaction; :meth:`VectorOutbox.drain` applies the entries after
commit (and again at start-up, for what a crash left): the *row* decides, so an entry whose row is gone
deletes the vector, and one whose row exists upserts it. :meth:`VectorOutbox.reindex` rebuilds every
partition from the rows; :meth:`VectorOutbox.migrate` moves the vectors of an app's single collection
of old (before partitions) into the partitions.

A service gives the outbox its rows through :class:`OutboxSource`."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sessionkit_server.retrieval.embeddings import Embedder
from sessionkit_server.retrieval.vector_index import VectorIndex, partition, partition_prefix

log = logging.getLogger("sessionkit.vectors")

VectorMetadata = dict[str, str | int | float | bool]
#: Vectors a write already computed, by row id: (the fingerprint they are valid for, the vector).
Computed = dict[str, tuple[str, list[float]]]


@dataclass(frozen=True)
class IndexRow:
    """A row as the vector index holds it."""

    id: str
    text: str
    #: The partition (collection) its vector lives in.
    collection: str
    #: Stored next to the vector (only what never changes, so the vector is rewritten only on a new text).
    metadata: VectorMetadata
    #: What a precomputed vector must match to be used (the content hash; "" when a row's text never
    #: changes under its id).
    fingerprint: str = ""


@dataclass(frozen=True)
class PendingEntry:
    id: int
    row_id: str
    app_name: str
    #: Where the vector lives; None for an entry written before partitions (its vector is in the app's
    #: collection of old).
    collection: str | None


class OutboxSource(Protocol):
    """What a service's store gives the outbox."""

    async def pending(self, limit: int) -> list[PendingEntry]: ...

    async def done(self, entry_ids: list[int]) -> None: ...

    async def index_rows(self, ids: list[str]) -> dict[str, IndexRow]: ...

    async def apps(self) -> list[str]: ...

    async def index_rows_after(
        self, app_name: str | None, after_pk: int, limit: int
    ) -> list[tuple[int, IndexRow]]:
        """Current rows (of one app, or of every app when None) with a key over ``after_pk``, in key order."""
        ...


class VectorOutbox:
    """``namespace``: the prefix of every app's collection name ("memories", "knowledge").
    ``done_rows``: deletes the "upsert" entries of these row ids (needed by :meth:`write_behind`)."""

    def __init__(
        self,
        source: OutboxSource,
        index: VectorIndex,
        embedder: Embedder,
        namespace: str,
        batch: int = 256,
        done_rows: Callable[[list[str]], Awaitable[None]] | None = None,
    ) -> None:
        self.source = source
        self.index = index
        self.embedder = embedder
        self.namespace = namespace
        self.batch = batch
        self._done_rows = done_rows
        self._lock = asyncio.Lock()
        self._behind: list[tuple[IndexRow, list[float]]] = []
        #: Vectors computed by the writes whose drains are running or waiting (see :meth:`drain`).
        self._computed: Computed = {}
        self._writer: asyncio.Task[None] | None = None
        #: Vectors queued by write_behind so far, and how many of them (in queue order) are in the
        #: index or have failed (left in the outbox): what :meth:`searchable` waits for.
        self._queued = 0
        self._indexed = 0
        self._waiters: list[asyncio.Future[None]] = []

    # -- write-behind: vectors a write computed, applied after its reply --------------------------------

    def write_behind(self, rows: Sequence[IndexRow], vectors: Sequence[list[float]]) -> None:
        """Queue the vectors a write computed for rows it has committed (with their outbox "upsert"
        entries, in the same transaction). They are applied in the background, coalesced with other
        writes' (one index call per partition per round), then their entries deleted; a failure leaves
        the entries for the next :meth:`drain`. Why: applying them before the reply cost each small
        ingestion a Chroma write and three outbox round trips (about 50 ms a file), now overlapped with
        the next request's work. Readers that must see them call :meth:`settle` first."""
        if self._done_rows is None:
            raise RuntimeError("write_behind needs the done_rows callable")
        self._behind.extend(zip(rows, vectors, strict=True))
        self._queued += len(rows)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_behind())

    async def settle(self) -> None:
        """Return once every vector queued by :meth:`write_behind` so far is applied (or has failed
        and stays in the outbox)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    async def searchable(self) -> None:
        """Return once every vector queued by :meth:`write_behind` so far is in the index (or has
        failed and stays in the outbox), without waiting for their outbox entries' deletion nor for
        vectors queued after this call: what a search or a near-duplicate check needs to see the
        writes already answered. (``settle`` waits for the writer to go idle: under a stream of
        concurrent adds each check waited for the adds queued after it too, and for a commit.)"""
        target = self._queued
        while self._indexed < target and self._writer is not None and not self._writer.done():
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _write_behind(self) -> None:
        assert self._done_rows is not None
        try:
            while self._behind:
                batch, self._behind = self._behind, []
                by_collection: dict[str, dict[str, tuple[IndexRow, list[float]]]] = defaultdict(dict)
                for row, vector in batch:
                    by_collection[row.collection][row.id] = (row, vector)
                try:
                    async with self._lock:
                        try:
                            for coll, items in by_collection.items():
                                await self.index.upsert(
                                    coll,
                                    list(items),
                                    [vector for _, vector in items.values()],
                                    [row.metadata for row, _ in items.values()],
                                )
                        finally:  # in the index, or failed and left in the outbox: readers go on
                            self._indexed += len(batch)
                            self._wake()
                        await self._done_rows([row.id for row, _ in batch])
                except Exception:  # the entries stay: the next drain applies them (the rows decide)
                    log.exception(
                        "applying %d %s vectors failed; left in the outbox", len(batch), self.namespace
                    )
        finally:  # idle (or cancelled): whatever is not queued any more is applied or left in the outbox
            self._indexed = max(self._indexed, self._queued - len(self._behind))
            self._wake()

    def app_collection(self, app_name: str) -> str:
        """An app's logical collection: its partitions are named after it (and, before partitions, it
        was the app's one collection, filtered by owner)."""
        return f"{self.namespace}:{app_name}"

    async def drain(self, computed: Computed | None = None) -> int:
        """Apply the pending entries (idempotent: upserts and deletes by id). Returns how many."""
        mine = computed or {}
        # Concurrent writers' vectors are pooled: whichever drain runs first applies every pending
        # entry, and without the others' vectors it embedded their texts again (16 concurrent memory
        # adds: most of each drain's time was the model re-embedding what the other 15 had computed).
        self._computed.update(mine)
        computed = self._computed
        await self.settle()  # else the entries of vectors queued behind would be embedded again
        try:
            return await self._drain(computed)
        finally:
            # When this drain returns, its own entries were applied (by it or by a drain before it).
            for row_id, value in mine.items():
                if self._computed.get(row_id) is value:
                    del self._computed[row_id]

    async def _drain(self, computed: Computed) -> int:
        applied = 0
        async with self._lock:
            while True:
                pending = await self.source.pending(self.batch)
                if not pending:
                    return applied
                rows = await self.source.index_rows([entry.row_id for entry in pending])
                upserts: dict[str, dict[str, IndexRow]] = defaultdict(dict)
                deletes: dict[str, set[str]] = defaultdict(set)
                for entry in pending:
                    row = rows.get(entry.row_id)  # the row decides: gone means delete
                    if row is not None:
                        upserts[row.collection][row.id] = row
                    else:
                        deletes[entry.collection or self.app_collection(entry.app_name)].add(entry.row_id)
                for coll, by_id in upserts.items():
                    await self._upsert(coll, list(by_id.values()), computed)
                for coll, gone in deletes.items():
                    await self.index.delete(coll, sorted(gone))
                await self.source.done([entry.id for entry in pending])
                applied += len(pending)

    async def _upsert(self, coll: str, rows: Sequence[IndexRow], computed: Computed) -> None:
        # Taken before the model call: ``computed`` is shared and changes while the model runs.
        known = {r.id: v for r in rows if (v := _matching(computed, r)) is not None}
        todo = [r for r in rows if r.id not in known]
        fresh = await self.embedder.embed([r.text for r in todo]) if todo else []
        vectors = {**known, **{r.id: v for r, v in zip(todo, fresh, strict=True)}}
        await self.index.upsert(
            coll, [r.id for r in rows], [vectors[r.id] for r in rows], [r.metadata for r in rows]
        )

    async def reindex(self, app_name: str | None) -> tuple[int, int]:
        """Rebuild the index from the rows: every partition of the app (of every app when None) is
        dropped, then each row embedded again into its partition. Returns (rows scanned, vectors
        written). A write meanwhile adds its own vectors through the outbox."""
        await self.drain()
        apps = [app_name] if app_name is not None else await self.source.apps()
        # Every app's partitions start with the encoded "<namespace>:" (see vector_index.partition).
        prefix = (
            partition_prefix(self.app_collection(app_name))
            if app_name is not None
            else partition(self.app_collection(""))
        )
        for coll in await self.index.collections(prefix):
            await self.index.drop(coll)
        for app in apps:
            await self.index.drop(self.app_collection(app))  # a collection from before partitions
        scanned = written = 0
        after = 0
        while True:
            page = await self.source.index_rows_after(app_name, after, self.batch)
            if not page:
                return scanned, written
            after = page[-1][0]
            by_collection: dict[str, list[IndexRow]] = defaultdict(list)
            for _, row in page:
                by_collection[row.collection].append(row)
            for coll, rows in by_collection.items():
                await self._upsert(coll, rows, {})
                written += len(rows)
            scanned += len(page)

    async def migrate(self, page: int = 1000) -> int:
        """Move the vectors of each app's single collection of old into the partitions, then drop it.
        Vectors are copied, not re-embedded; those whose row is gone are left behind. Safe to repeat
        after a crash (upserts by id; the old collection is dropped last). Returns the vectors moved."""
        moved = 0
        for app_name in await self.source.apps():
            legacy = self.app_collection(app_name)
            if not await self.index.exists(legacy):
                continue
            log.warning("moving %s vectors into partitions", self.namespace, extra={"app_name": app_name})
            offset = 0
            while True:
                entries = await self.index.entries(legacy, offset, page)
                if not entries:
                    break
                offset += len(entries)
                rows = await self.source.index_rows([e.id for e in entries])
                by_collection: dict[str, list[tuple[IndexRow, list[float]]]] = defaultdict(list)
                for entry in entries:
                    row = rows.get(entry.id)
                    if row is not None:
                        by_collection[row.collection].append((row, entry.vector))
                for coll, items in by_collection.items():
                    await self.index.upsert(
                        coll, [r.id for r, _ in items], [v for _, v in items], [r.metadata for r, _ in items]
                    )
                    moved += len(items)
            await self.index.drop(legacy)
            log.warning("moved %s vectors", self.namespace, extra={"app_name": app_name, "count": moved})
        return moved


def _matching(computed: Computed, row: IndexRow) -> list[float] | None:
    """The vector computed for ``row``'s current text, if any."""
    found = computed.get(row.id)
    return found[1] if found is not None and found[0] == row.fingerprint else None
