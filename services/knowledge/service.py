"""The knowledge service's business layer (the gRPC servicer adapts it): its lifecycle, sources
(get, list, delete, clear), hybrid search and vector maintenance. Ingestion is in ingest.py, settings,
results and scopes in base.py.

Search ranks like memory search (docs/MEMORY.md): dense cosine similarity (Chroma) and lexical
relevance (SQLite FTS5 bm25 / BM25 in SQL on PostgreSQL) fused by reciprocal rank
(sessionkit_server.retrieval.fusion.rrf_normalized). Knowledge chunks have no quality or recency, so the
score is the normalized RRF value itself."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from sessionkit import reasons
from sessionkit.errors import FieldViolation, InvalidArgument, NotFound
from sessionkit_server.common import checks, paging
from sessionkit_server.common.idempotency import Idempotency, then
from sessionkit_server.common.identity import Owner
from sessionkit_server.common.timestamps import now_us
from sessionkit_server.knowledge.base import (
    CHUNKING,
    CREATED,
    EMBEDDING,
    FETCHING,
    PARSING,
    RECEIVING,
    STORING,
    UNCHANGED,
    UPDATED,
    Hit,
    IngestResult,
    JsonObject,
    KnowledgeSettings,
    Progress,
    ProgressFn,
    _check_filter,
    collection,
    default_scopes,
    log,
    scope_of,
)
from sessionkit_server.knowledge.ingest import KnowledgeIngestion
from sessionkit_server.knowledge.records import Scope, SourceRecord, vector_collection
from sessionkit_server.retrieval.expansion import best_scores, rankings_with_expansion
from sessionkit_server.retrieval.explain import Explainer, RankFusion
from sessionkit_server.retrieval.fusion import rrf_normalized

__all__ = [
    "CHUNKING", "CREATED", "EMBEDDING", "FETCHING", "PARSING", "RECEIVING", "STORING", "UNCHANGED",
    "UPDATED", "Hit", "IngestResult", "KnowledgeService", "KnowledgeSettings", "Progress", "ProgressFn",
    "collection", "default_scopes", "now_us", "scope_of",
]  # fmt: skip


class KnowledgeService(KnowledgeIngestion):
    async def start(self) -> None:
        """Migrate, then apply what a crash left in the outbox (rows written, vectors not yet), and
        move vectors of the app-wide collections of old into per-scope partitions."""
        await self.store.start()
        await self.drain_outbox()
        await self.migrate_vectors()
        if not self.store.db.read_only:  # purging deletes: nothing to do on read-only storage
            self._purger = asyncio.create_task(self._purge_forever(self.settings.purge_interval_seconds))

    async def close(self) -> None:
        await self.vectors.settle()
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
            self._purger = None
        if self.owns_retrieval:
            await self.index.close()
            await self.embedder.close()
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

    async def get(self, owner: Owner, source_id: str, scope: Scope, name: str) -> SourceRecord:
        if source_id:
            record = await self.store.by_id(owner.app_name, source_id, self._all_visible(owner, scope))
        else:
            record = await self.store.by_name(owner.app_name, scope, self._check_name(name))
        if record is None:
            raise reasons.KNOWLEDGE_SOURCE_NOT_FOUND.error(
                source=source_id or name, metadata={"source": source_id or name}
            )
        return record

    async def list_sources(
        self, owner: Owner, scopes: Sequence[Scope], kind: int, page_size: int, page_token: str
    ) -> tuple[list[SourceRecord], str]:
        size = paging.page_size(page_size, 100, 1000)
        offset = paging.read_int_token(page_token, "a listing position")
        rows = await self.store.list_sources(
            owner.app_name, list(scopes) or default_scopes(owner), kind, offset, size + 1
        )
        more = len(rows) > size
        return rows[:size], paging.page_token(str(offset + size)) if more else ""

    async def delete(
        self,
        owner: Owner,
        source_id: str,
        scope: Scope,
        name: str,
        allow_missing: bool,
        idem: Idempotency[tuple[bool, int]] | None = None,
    ) -> tuple[bool, int]:
        """(deleted, chunks removed). With ``idem``, a repeat of the key gets the first answer (so a
        retried delete whose reply was lost answers "deleted", not "not found")."""
        await self.replay(owner, idem)
        try:
            record = await self.get(owner, source_id, scope, name)
        except NotFound:
            if allow_missing:
                if idem is not None:
                    await self.store.remember(owner.app_name, owner.user_id, idem, (False, 0))
                return False, 0
            raise
        removed = await self.store.delete(
            owner.app_name,
            record.id,
            [record.scope],
            then(idem, lambda n: (n is not None, n or 0)),
            owner.user_id,
        )
        await self.drain_outbox()
        if removed is None:
            if allow_missing:
                return False, 0
            raise reasons.KNOWLEDGE_SOURCE_NOT_FOUND.error(source=record.id)
        return True, removed

    async def clear(
        self, owner: Owner, scope: Scope, idem: Idempotency[tuple[int, int]] | None = None
    ) -> tuple[int, int]:
        """(sources, chunks) removed. With ``idem``, a repeat of the key gets the first answer."""
        await self.replay(owner, idem)
        result = await self.store.clear(owner.app_name, scope, idem, owner.user_id)
        await self.drain_outbox()
        return result

    async def search(
        self,
        owner: Owner,
        query: str,
        limit: int = 5,
        scopes: Sequence[Scope] = (),
        source_ids: Sequence[str] = (),
        source_names: Sequence[str] = (),
        metadata_filter: JsonObject | None = None,
        min_score: float | None = None,
        explain: bool = False,
    ) -> list[Hit]:
        """The best ``limit`` chunks for ``query``; with ``explain``, each hit carries the ranks and
        scores its score was made from (retrieval/explain.py)."""
        if not query.strip():
            raise InvalidArgument("empty query", violations=[FieldViolation("query", "must not be empty")])
        if limit < 1 or limit > self.settings.max_limit:
            raise InvalidArgument(
                "invalid limit",
                violations=[FieldViolation("limit", f"must be between 1 and {self.settings.max_limit}")],
            )
        if min_score is not None:
            checks.number(min_score, "min_score")  # NaN compares false: it would hide every hit
        wanted = _check_filter(metadata_filter)
        searched = list(scopes) or default_scopes(owner)
        k = max(limit * 4, 40)

        async def rankings_of(text: str) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
            async def dense_ranking() -> list[tuple[str, float]]:
                vector = await self.embedder.embed_one(text)
                await self.vectors.searchable()  # the vectors of ingestions already answered
                return await self._dense(owner.app_name, searched, vector, k)

            # The lexical search does not need the query's vector: it runs while the model embeds it.
            dense, lexical = await asyncio.gather(
                dense_ranking(), self.store.lexical(owner.app_name, searched, text, k)
            )
            return dense, lexical

        rankings, weights = await rankings_with_expansion(
            self.expander, query, rankings_of, self.settings.weight_lexical_rank
        )
        fused = rrf_normalized(
            [[i for i, _ in ranking] for ranking in rankings], k=self.settings.rrf_k, weights=weights
        )
        if not fused:
            return []
        semantic, lexical_norm = best_scores(rankings)
        ids, names = set(source_ids), set(source_names)
        hits: list[Hit] = []
        ranked = list(fused)  # best first
        # The rows of the best candidates only, a page at a time, until ``limit`` hits pass the
        # filters: the same hits as reading every candidate (up to 2 x k of them, each with its
        # source row) in fewer rows; with one or two chunks per file that read grew with the limit.
        at, page = 0, 2 * limit + 10
        while at < len(ranked) and len(hits) < limit:
            wanted_ids = ranked[at : at + page]
            at, page = at + page, page * 4
            rows = await self.store.current_chunks(owner.app_name, searched, wanted_ids)
            for chunk_id in wanted_ids:
                found = rows.get(chunk_id)
                if found is None:
                    continue  # a vector the outbox has not removed yet, or another version
                chunk, source = found
                if (ids or names) and source.id not in ids and source.name not in names:
                    continue
                if any(source.metadata.get(key) != value for key, value in wanted.items()):
                    continue
                score = fused[chunk_id]
                if min_score is not None and score < min_score:
                    continue
                hits.append(
                    Hit(
                        chunk,
                        source,
                        score,
                        max(0.0, semantic.get(chunk_id, 0.0)),
                        lexical_norm.get(chunk_id, 0.0),
                    )
                )
        hits = hits[:limit]
        if explain:  # after the ranking, for the hits returned only: it cannot change what is found
            fusion = RankFusion(self.settings.rrf_k, 1.0, self.settings.weight_lexical_rank)
            # With query expansion the ranks shown are the query's own (docs/KNOWLEDGE.md).
            explainer = Explainer(rankings[0], rankings[1], fusion)
            for hit in hits:  # chunks have no quality or recency: the score is the relevance
                hit.explanation = explainer.explain(hit.chunk.id, fused[hit.chunk.id], hit.score)
        return hits

    async def _dense(
        self, app_name: str, scopes: Sequence[Scope], vector: list[float], k: int
    ) -> list[tuple[str, float]]:
        """The ``k`` nearest chunks over the scopes: each scope's partition queried without a filter
        (concurrently), the answers merged by similarity."""
        answers = await asyncio.gather(
            *(self.index.query(vector_collection(app_name, scope), vector, k) for scope in scopes)
        )
        merged = sorted((hit for answer in answers for hit in answer), key=lambda hit: -hit[1])
        return merged[:k]

    async def reindex(self, app_name: str | None) -> tuple[int, int]:
        """Rebuild the vector index from the chunk rows (the source of truth): the app's partitions
        (every app's when None) are dropped, then each current chunk embedded again. Returns (rows
        scanned, vectors written). A vector written for a chunk deleted meanwhile is never returned
        (rows decide what a search sees)."""
        return await self.vectors.reindex(app_name)

    async def migrate_vectors(self, page: int = 1000) -> int:
        """Move the vectors of each app's single collection of old (before partitions, filtered by
        bucket) into the per-scope partitions, then drop it. Returns the vectors moved."""
        return await self.vectors.migrate(page)
