"""The memory service: the business layer the gRPC servicer adapts. Its behaviours live one file
each (base.py, search.py, writes.py, extract_turn.py); this file holds its lifecycle (migrations,
start-up outbox drain, the idempotency purge) and vector maintenance (migration of the vectors of old,
reindex), both through the shared outbox (sessionkit_server.common.vector_outbox)."""

from __future__ import annotations

import asyncio
import contextlib

from sessionkit_server.common.timestamps import now_us
from sessionkit_server.memory.base import (
    AddResult,
    ExtractResult,
    Hit,
    MemorySettings,
    NewMemory,
    Operation,
    content_hash,
    log,
    normalize,
)
from sessionkit_server.memory.extract_turn import MemoryExtraction

__all__ = [
    "AddResult",
    "ExtractResult",
    "Hit",
    "MemoryService",
    "MemorySettings",
    "NewMemory",
    "Operation",
    "content_hash",
    "normalize",
]


class MemoryService(MemoryExtraction):
    async def start(self) -> None:
        """Migrate the rows, move vectors of the single collection of old into partitions, then apply
        what a crash left in the outbox (rows written, vectors not yet)."""
        await self.store.start()
        await self.migrate_vectors()
        await self.drain_outbox()
        if not self.store.db.read_only:  # purging deletes: nothing to do on read-only storage
            self._purger = asyncio.create_task(self._purge_forever(self.settings.purge_interval_seconds))

    async def close(self) -> None:
        await self.vectors.settle()
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
            self._purger = None
        await self.index.close()
        await self.embedder.close()
        if self.extractor is not None:
            await self.extractor.close()
        if self.expander is not None:
            await self.expander.close()

    async def _purge_forever(self, interval: float) -> None:
        """Delete idempotency records once they are 24 hours old (replays ignore them already)."""
        while True:
            try:
                purged = await self.store.purge_idempotency(now_us())
                if purged:
                    log.info("purged idempotency records", extra={"count": purged})
            except Exception:  # keep purging after a transient database error
                log.exception("idempotency purge failed")
            await asyncio.sleep(interval)

    async def migrate_vectors(self, page: int = 1000) -> int:
        """Move the vectors of each app's single collection of old (before partitions, filtered by user
        and bucket) into the per-user and per-session partitions, then drop it. Returns the vectors moved."""
        return await self.vectors.migrate(page)

    async def reindex(self, app_name: str | None) -> tuple[int, int]:
        """Rebuild the vector index from the rows (the source of truth): every partition of the app
        (of every app when None) is dropped, then each row re-embedded into its partition.
        Returns (rows scanned, vectors written)."""
        return await self.vectors.reindex(app_name)
