"""Writing memories: add (exact dedup by content hash, merging into a near-duplicate neighbour),
batch add, update, delete and clear. Each write goes through the store in one transaction with its
history and outbox entry, then the outbox is drained."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

import numpy as np

from sessionkit import reasons
from sessionkit.errors import FieldViolation, InvalidArgument, NotFound
from sessionkit_server.common import failpoints
from sessionkit_server.common.idempotency import Idempotency, then
from sessionkit_server.common.identity import Owner
from sessionkit_server.common.timestamps import now_us
from sessionkit_server.memory import tables as t
from sessionkit_server.memory.base import MERGE_CANDIDATES, AddResult, JsonObject, NewMemory, content_hash
from sessionkit_server.memory.records import MERGE, AddOutcome, MemoryRecord, MergeInto, owner_collections
from sessionkit_server.memory.search import MemoryReads
from sessionkit_server.memory.store import index_row
from sessionkit_server.retrieval.words import details_differ


class MemoryWrites(MemoryReads):
    async def add(
        self,
        owner: Owner,
        text: str,
        memory_type: int = t.LONG,
        quality: float | None = None,
        metadata: JsonObject | None = None,
        actor: str = "",
        skip_merge: bool = False,
        idem: Idempotency[AddResult] | None = None,
    ) -> AddResult:
        """Store a memory (or find it already stored). With ``idem``, a repeat of the key raises
        ``Replayed`` with the first response and writes nothing."""
        text = self._check_text(text)
        quality = self._check_quality(0.5 if quality is None else quality)
        meta = self._check_metadata(metadata)
        # The text is embedded while the key and the same content are looked up (both reads, and a
        # repeat or an exact duplicate is rare): the reads are off the add's critical path, and
        # concurrent adds reach the model together. A wasted embedding is the price of a duplicate.
        embedding = asyncio.ensure_future(self._add_embedder.embed_one(text))
        embedding.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved if unused
        try:
            await self._replay(owner, idem)
            digest = content_hash(text)
            existing = await self._same_content(owner, memory_type, digest)
        except BaseException:
            embedding.cancel()
            raise
        if existing is not None:
            embedding.cancel()
            result = AddResult(existing, deduplicated=True)
            if idem is not None:
                await self.store.remember(owner, idem, result, now_us())
            return result
        vector = await embedding
        if not skip_merge and self.settings.merge_threshold < 1.0:
            merged = await self._merge_into_neighbour(
                owner,
                memory_type,
                text,
                vector,
                quality,
                meta,
                actor,
                then(idem, lambda record: AddResult(record, merged=True)),
            )
            if merged is not None:
                return AddResult(merged, merged=True)
        record = self._new_record(owner, memory_type, text, digest, quality, meta, now_us())
        outcome: AddOutcome = await self.store.add(
            record,
            actor,
            self.settings.short_window,
            then(idem, lambda o: AddResult(o.memory, deduplicated=o.deduplicated, evicted=o.evicted)),
        )
        failpoints.hit("memory.after_row_commit")
        if outcome.memory.id == record.id and not outcome.deduplicated and not outcome.evicted:
            # A plain insert: its vector goes in behind the reply, coalesced with concurrent adds'
            # (searches and near-duplicate checks settle it first; the outbox entry stays until then).
            self.vectors.write_behind([index_row(outcome.memory)], [vector])
        else:
            await self.drain_outbox({outcome.memory.id: (outcome.memory.content_hash, vector)})
        return AddResult(outcome.memory, deduplicated=outcome.deduplicated, evicted=outcome.evicted)

    def _new_record(
        self,
        owner: Owner,
        memory_type: int,
        text: str,
        digest: str,
        quality: float,
        meta: JsonObject,
        now: int,
    ) -> MemoryRecord:
        ttl = self.settings.short_ttl_seconds if memory_type == t.SHORT else None
        return MemoryRecord(
            id="m-" + uuid.uuid4().hex,
            app_name=owner.app_name,
            user_id=owner.user_id,
            session_id=owner.session_id,
            memory_type=memory_type,
            text=text,
            content_hash=digest,
            quality=quality,
            metadata=meta,
            create_us=now,
            update_us=now,
            expire_us=None if ttl is None else now + ttl * 1_000_000,
            revision=1,
        )

    async def add_many(
        self,
        owner: Owner,
        items: list[NewMemory],
        actor: str = "",
        skip_merge: bool = False,
        idem: Idempotency[list[AddResult]] | None = None,
    ) -> list[AddResult]:
        """Store many memories in one transaction, with one batched embedding and one vector write per
        partition: the results are in the order of ``items``, each as :meth:`add` would answer it.
        Exact duplicates (of stored memories or of an earlier item) are deduplicated; a near-duplicate
        of a stored memory is merged into it, and one of an earlier item of the batch is folded into
        that item (the higher quality and combined metadata are stored with its ADD)."""
        checked = self._check_batch(items)
        await self._replay(owner, idem)
        now = now_us()
        digests = [content_hash(text) for text, _, _, _ in checked]
        stored = await self.store.by_hashes(owner, sorted(set(digests)), now)
        # Texts to embed: not stored yet, first occurrence in the batch only.
        first_of: dict[tuple[int, str], int] = {}
        todo: list[int] = []
        for n, ((_, kind, _, _), digest) in enumerate(zip(checked, digests, strict=True)):
            if (kind, digest) in stored or (kind, digest) in first_of:
                continue
            first_of[(kind, digest)] = n
            todo.append(n)
        vectors = await self.embedder.embed([checked[n][0] for n in todo]) if todo else []
        vector_of = dict(zip(todo, vectors, strict=True))
        merge_target = {} if skip_merge else await self._batch_merge_targets(owner, checked, todo, vector_of)
        # Plan: one store item per batch item, in order (duplicates resolve to the first occurrence).
        plan: list[MemoryRecord | MergeInto] = []
        slot: dict[int, int] = {}  # batch item -> its store item
        folded: dict[int, int] = {}  # batch item -> the earlier batch item it was folded into
        records: dict[int, MemoryRecord] = {}
        for n in todo:
            text, kind, quality, meta = checked[n]
            target = merge_target.get(n)
            if isinstance(target, int):  # an earlier item of this batch
                base = records[target]
                base.quality = max(base.quality, quality)
                base.metadata = {**meta, **base.metadata}
                folded[n] = target
                continue
            record = self._new_record(owner, kind, text, digests[n], quality, meta, now)
            records[n] = record
            slot[n] = len(plan)
            plan.append(record if target is None else MergeInto(target, quality, meta, record))
        outcomes = await self.store.add_many(
            owner,
            plan,
            actor,
            self.settings.short_window,
            now,
            then(
                idem, lambda outs: self._batch_results(checked, digests, stored, first_of, slot, folded, outs)
            ),
        )
        failpoints.hit("memory.after_row_commit")
        # The vectors just computed, for the memories this call inserted (a merge target or an existing
        # duplicate keeps its own vector: its text is not this item's).
        inserted = [
            (records[n], vector_of[n]) for n, i in slot.items() if outcomes[i].memory.id == records[n].id
        ]
        if any(o.evicted or o.deduplicated for o in outcomes):
            # Deletes (short-term evictions) or a row another write got first: the outbox decides.
            await self.drain_outbox({r.id: (r.content_hash, v) for r, v in inserted})
        else:
            # Plain inserts and merges (a merge keeps its vector): as a single add's, the vectors go
            # in behind the reply (searches and near-duplicate checks wait for them).
            self.vectors.write_behind([index_row(r) for r, _ in inserted], [v for _, v in inserted])
        return self._batch_results(checked, digests, stored, first_of, slot, folded, outcomes)

    @staticmethod
    def _batch_results(
        checked: list[tuple[str, int, float, JsonObject]],
        digests: list[str],
        stored: dict[tuple[int, str], MemoryRecord],
        first_of: dict[tuple[int, str], int],
        slot: dict[int, int],
        folded: dict[int, int],
        outcomes: list[AddOutcome],
    ) -> list[AddResult]:
        def of(n: int) -> AddOutcome:
            return outcomes[slot[n]] if n in slot else of(folded[n])

        results: list[AddResult] = []
        for n, ((_, kind, _, _), digest) in enumerate(zip(checked, digests, strict=True)):
            key = (kind, digest)
            if key in stored:
                results.append(AddResult(stored[key], deduplicated=True))
            elif first_of[key] != n:
                results.append(AddResult(of(first_of[key]).memory, deduplicated=True))
            elif n in folded:
                results.append(AddResult(of(n).memory, merged=True))
            else:
                o = outcomes[slot[n]]
                results.append(AddResult(o.memory, o.deduplicated, o.merged, o.evicted))
        return results

    async def _batch_merge_targets(
        self,
        owner: Owner,
        checked: list[tuple[str, int, float, JsonObject]],
        todo: list[int],
        vector_of: dict[int, list[float]],
    ) -> dict[int, str | int]:
        """For each new batch item that is a near-duplicate: the stored memory's id, or the index of
        the earlier batch item, it merges into (stored memories first)."""
        threshold = self.settings.merge_threshold
        if threshold >= 1.0 or not todo:
            return {}
        targets: dict[int, str | int] = {}
        by_collection: dict[str, list[int]] = defaultdict(list)
        for n in todo:
            kind = checked[n][1]
            by_collection[owner_collections(owner, kind)[0]].append(n)
        neighbours: dict[int, list[tuple[str, float]]] = {}
        await self.vectors.searchable()  # near duplicates among the adds already answered
        for coll, members in by_collection.items():
            found = await self.index.query_many(coll, [vector_of[n] for n in members], MERGE_CANDIDATES)
            neighbours.update(zip(members, found, strict=True))
        candidate_ids = sorted({i for hits in neighbours.values() for i, sim in hits if sim >= threshold})
        rows = await self.store.by_ids(owner, candidate_ids, now_us())
        for n in todo:
            text, kind = checked[n][0], checked[n][1]
            for memory_id, sim in neighbours.get(n, []):
                row = rows.get(memory_id)
                if (
                    sim >= threshold
                    and row is not None
                    and row.memory_type == kind
                    and not details_differ(row.text, text)
                ):
                    targets[n] = memory_id
                    break
        # Within the batch: cosine of unit vectors is their dot product (one matrix product).
        matrix = np.asarray([vector_of[n] for n in todo], dtype=np.float32)
        similar = (matrix @ matrix.T) >= threshold
        for j_pos, j in enumerate(todo):
            if j in targets:
                continue
            for i_pos in np.flatnonzero(similar[j_pos, :j_pos]):
                i = todo[int(i_pos)]
                if i in targets or checked[i][1] != checked[j][1]:
                    continue
                if not details_differ(checked[i][0], checked[j][0]):
                    targets[j] = i
                    break
        return targets

    def _check_batch(self, items: list[NewMemory]) -> list[tuple[str, int, float, JsonObject]]:
        if not items:
            raise InvalidArgument(
                "no memories to add", violations=[FieldViolation("memories", "at least one")]
            )
        if len(items) > self.settings.max_batch_items:
            raise InvalidArgument(
                "too many memories in one call",
                violations=[FieldViolation("memories", f"at most {self.settings.max_batch_items}")],
            )
        checked: list[tuple[str, int, float, JsonObject]] = []
        for n, item in enumerate(items):
            checked.append(
                (
                    self._check_text(item.text, f"memories[{n}].text"),
                    item.memory_type,
                    self._check_quality(
                        0.5 if item.quality is None else item.quality, f"memories[{n}].quality_score"
                    ),
                    self._check_metadata(item.metadata),
                )
            )
        return checked

    async def _merge_into_neighbour(
        self,
        owner: Owner,
        memory_type: int,
        text: str,
        vector: list[float],
        quality: float,
        meta: JsonObject,
        actor: str,
        idem: Idempotency[MemoryRecord] | None = None,
    ) -> MemoryRecord | None:
        """Merge into the nearest memory at or above the threshold that says the same thing: a
        neighbour differing in a detail (a number, date, weekday, name, negation: retrieval.words)
        is another fact, and merging would lose the new one."""
        (coll,) = owner_collections(owner, memory_type)
        threshold = self.settings.merge_threshold
        await self.vectors.searchable()  # near duplicates among the adds already answered
        nearest = [hit for hit in await self._neighbours((coll, vector)) if hit[1] >= threshold]
        if not nearest:
            return None
        rows = await self.store.by_ids(owner, [memory_id for memory_id, _ in nearest], now_us())
        current = next(
            (
                rows[memory_id]
                for memory_id, _ in nearest
                if memory_id in rows  # not: a vector the outbox has not removed yet
                and rows[memory_id].memory_type == memory_type
                and not details_differ(rows[memory_id].text, text)
            ),
            None,
        )
        if current is None:
            return None
        merged = await self.store.update(
            owner,
            current.id,
            now_us(),
            actor,
            quality=max(current.quality, quality),
            metadata={**meta, **current.metadata},
            operation=MERGE,
            idem=idem,
        )
        await self.drain_outbox()
        return merged

    async def update(
        self,
        owner: Owner,
        memory_id: str,
        *,
        text: str | None = None,
        metadata: JsonObject | None = None,
        merge_metadata: bool = False,
        quality: float | None = None,
        expected_revision: int | None = None,
        actor: str = "",
        idem: Idempotency[MemoryRecord] | None = None,
    ) -> MemoryRecord:
        text_hash = None
        if text is not None:
            checked = self._check_text(text)
            text_hash = (checked, content_hash(checked))
        if quality is not None:
            quality = self._check_quality(quality)
        meta = None if metadata is None else self._check_metadata(metadata)
        await self._replay(owner, idem)
        if meta is not None and merge_metadata:
            current = await self.get(owner, memory_id)
            meta = {**current.metadata, **meta}
        try:
            updated = await self.store.update(
                owner,
                memory_id,
                now_us(),
                actor,
                text_hash=text_hash,
                quality=quality,
                metadata=meta,
                expected_revision=expected_revision,
                idem=idem,
            )
        except Exception as error:
            if "uq_sk_memories_content" in str(error) or "UNIQUE constraint failed" in str(error):
                raise reasons.MEMORY_EXISTS.error() from None
            raise
        await self.drain_outbox()
        return updated

    async def delete(
        self,
        owner: Owner,
        memory_id: str,
        allow_missing: bool = False,
        expected_revision: int | None = None,
        actor: str = "",
        idem: Idempotency[bool] | None = None,
    ) -> bool:
        await self._replay(owner, idem)
        try:
            await self.store.delete(
                owner, memory_id, now_us(), actor, expected_revision, then(idem, lambda _: True)
            )
        except NotFound:
            if allow_missing:
                if idem is not None:
                    await self.store.remember(owner, idem, False, now_us())
                return False
            raise
        await self.drain_outbox()
        return True

    async def clear(
        self,
        owner: Owner,
        memory_type: int | None,
        actor: str = "",
        idem: Idempotency[int] | None = None,
        metadata_filter: JsonObject | None = None,
    ) -> int:
        """Delete the owner's memories of ``memory_type`` (all when None), only those whose metadata
        matches ``metadata_filter`` when given (exact values, as search and list match)."""
        matches = self._filter(metadata_filter, None) if metadata_filter else None
        await self._replay(owner, idem)
        deleted = await self.store.clear(owner, memory_type, now_us(), actor, then(idem, len), matches)
        await self.drain_outbox()
        return len(deleted)
