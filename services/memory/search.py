"""Reading memories: get, list, history, hybrid search and the context block built from it.

Search ranks by a documented fusion (docs/MEMORY.md): dense cosine similarity (Chroma) and lexical
relevance (SQLite FTS5 bm25 / BM25 in SQL on PostgreSQL) are fused by reciprocal rank, then combined
with the memory's quality score and its recency (sessionkit_server.retrieval.fusion). With query
expansion on (sessionkit_server.retrieval.expansion) the LLM's rewordings of the query add their own
dense and lexical rankings to the fusion."""

from __future__ import annotations

import asyncio

from sessionkit import reasons
from sessionkit.errors import FieldViolation, InvalidArgument
from sessionkit_server.common import checks, paging
from sessionkit_server.common.identity import Owner
from sessionkit_server.common.timestamps import now_us
from sessionkit_server.memory import tables as t
from sessionkit_server.memory.base import Hit, JsonObject, MemoryBase
from sessionkit_server.memory.records import ChangeRecord, MemoryRecord, owner_collections
from sessionkit_server.retrieval.expansion import best_scores, rankings_with_expansion
from sessionkit_server.retrieval.explain import Explainer, RankFusion
from sessionkit_server.retrieval.fusion import FusionWeights, fused_score, recency, rrf_normalized


class MemoryReads(MemoryBase):
    async def get(self, owner: Owner, memory_id: str) -> MemoryRecord:
        record = await self.store.get(owner, memory_id, now_us())
        if record is None:
            raise reasons.MEMORY_NOT_FOUND.error(memory_id=memory_id, metadata={"memory_id": memory_id})
        return record

    async def list_memories(
        self,
        owner: Owner,
        memory_type: int | None,
        page_size: int,
        page_token: str,
        metadata_filter: JsonObject | None = None,
        min_quality: float | None = None,
    ) -> tuple[list[MemoryRecord], str]:
        size = paging.page_size(page_size, 100, 1000)
        after = paging.read_int_token(page_token, "a memory position")
        check = self._filter(metadata_filter, min_quality)
        out: list[MemoryRecord] = []
        last = after
        while len(out) < size:
            rows = await self.store.list_page(owner, memory_type, size, last, now_us())
            if not rows:
                return out, ""
            for pk, record in rows:
                last = pk
                if check(record):
                    out.append(record)
                    if len(out) == size:
                        return out, paging.page_token(str(last))
            if len(rows) < size:
                return out, ""
        return out, paging.page_token(str(last))

    async def history(
        self, owner: Owner, memory_id: str, memory_type: int | None, page_size: int, page_token: str
    ) -> tuple[list[ChangeRecord], str]:
        size = paging.page_size(page_size, 100, 1000)
        after = paging.read_int_token(page_token, "a change id")
        changes = await self.store.changes(owner, memory_id, memory_type, size + 1, after)
        more = len(changes) > size
        changes = changes[:size]
        return changes, paging.page_token(str(changes[-1].id)) if more else ""

    async def search(
        self,
        owner: Owner,
        query: str,
        memory_type: int | None = None,
        limit: int = 5,
        min_quality: float | None = None,
        metadata_filter: JsonObject | None = None,
        min_score: float | None = None,
        explain: bool = False,
    ) -> list[Hit]:
        """The best ``limit`` memories for ``query``; with ``explain``, each hit carries the ranks,
        scores and terms its score was made from (retrieval/explain.py)."""
        if not query.strip():
            raise InvalidArgument("empty query", violations=[FieldViolation("query", "must not be empty")])
        self._check_text(query, "query")
        if limit < 1 or limit > self.settings.max_limit:
            raise InvalidArgument(
                "invalid limit",
                violations=[FieldViolation("limit", f"must be between 1 and {self.settings.max_limit}")],
            )
        check = self._filter(metadata_filter, min_quality)
        if min_score is not None:
            checks.number(min_score, "min_score")  # NaN compares false: it would hide every hit
        k = max(limit * 4, 40)
        now = now_us()

        rankings, weights = await rankings_with_expansion(
            self.expander,
            query,
            lambda q: self._rankings(owner, memory_type, q, k, now),
            self.settings.weight_lexical_rank,
        )
        fused = rrf_normalized(
            [[i for i, _ in ranking] for ranking in rankings], k=self.settings.rrf_k, weights=weights
        )
        if not fused:
            return []
        semantic, lexical_norm = best_scores(rankings)
        rows = await self.store.by_ids(owner, list(fused), now)  # the rows decide: scope, expiry, deletion
        s = self.settings
        terms = FusionWeights(s.weight_relevance, s.weight_quality, s.weight_recency)
        hits: list[Hit] = []
        for memory_id, relevance in fused.items():
            record = rows.get(memory_id)
            if record is None or not check(record):
                continue
            fresh = recency(max(0.0, (now - record.update_us) / 86_400e6), s.recency_half_life_days)
            hits.append(
                Hit(
                    record,
                    fused_score(relevance, record.quality, fresh, terms),
                    max(0.0, semantic.get(memory_id, 0.0)),
                    lexical_norm.get(memory_id, 0.0),
                    record.quality,
                    fresh,
                )
            )
        hits.sort(key=lambda h: -h.score)
        if min_score is not None:
            hits = [h for h in hits if h.score >= min_score]
        hits = hits[:limit]
        if explain:  # after the ranking, for the hits returned only: it cannot change what is found
            # With query expansion the ranks shown are the query's own; the fused score counts the
            # rewordings' rankings too (docs/MEMORY.md, "Query expansion").
            fusion = RankFusion(self.settings.rrf_k, 1.0, self.settings.weight_lexical_rank)
            explainer = Explainer(rankings[0], rankings[1], fusion)
            for hit in hits:
                hit.explanation = explainer.explain(
                    hit.memory.id, fused[hit.memory.id], hit.score, terms, hit.quality, hit.recency
                )
        return hits

    async def _rankings(
        self, owner: Owner, memory_type: int | None, query: str, k: int, now: int
    ) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """The dense and lexical rankings of ``query``, ``k`` deep each."""

        async def dense_ranking() -> list[tuple[str, float]]:
            vector = await self.embedder.embed_one(query)
            return await self._dense(owner, memory_type, vector, k)

        # The lexical search does not need the query's vector: it runs while the model embeds it (in
        # a turn, the embedding is the longest step of the search).
        dense, lexical = await asyncio.gather(
            dense_ranking(), self.store.lexical(owner, memory_type, query, k, now)
        )
        return dense, lexical

    async def _dense(
        self, owner: Owner, memory_type: int | None, vector: list[float], k: int
    ) -> list[tuple[str, float]]:
        """The ``k`` nearest of the owner's partitions (the session's short-term and/or the user's
        long-term memories), best first."""
        await self.vectors.searchable()  # the vectors of adds already answered
        answers = await asyncio.gather(
            *(self.index.query(coll, vector, k) for coll in owner_collections(owner, memory_type))
        )
        found = [hit for answer in answers for hit in answer]
        found.sort(key=lambda hit: -hit[1])
        return found[:k]

    async def context(
        self,
        owner: Owner,
        query: str,
        max_items: int = 3,
        memory_type: int | None = None,
        min_quality: float | None = None,
        metadata_filter: JsonObject | None = None,
        max_chars: int = 0,
    ) -> tuple[str, list[Hit]]:
        checks.count(max_chars, "max_chars", high=1_000_000)  # the gateway's bound; 0: no limit
        hits = await self.search(owner, query, memory_type, max_items, min_quality, metadata_filter)
        lines: list[str] = []
        used: list[Hit] = []
        total = 0
        for hit in hits:
            kind = "long-term" if hit.memory.memory_type == t.LONG else "short-term"
            line = f"- {hit.memory.text} ({kind})"
            if max_chars and total + len(line) + 1 > max_chars:
                break
            lines.append(line)
            used.append(hit)
            total += len(line) + 1
        return "\n".join(lines), used

    async def _same_content(self, owner: Owner, memory_type: int, digest: str) -> MemoryRecord | None:
        # A fast path only: the unique constraint is what guarantees one row under concurrency.
        return await self._same_contents((owner, memory_type, digest))
