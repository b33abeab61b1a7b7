"""The memory service's business layer: validation, scopes, dedup and merging, the vector outbox,
hybrid search and context building.

Search ranks by a documented fusion (docs/MEMORY.md): dense cosine similarity (Chroma) and lexical
relevance (SQLite FTS5 bm25 / PostgreSQL ts_rank_cd) are fused by reciprocal rank, then combined with
the memory's quality score and its recency (sessionkit_server.retrieval.fusion)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import unicodedata
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from sessionkit.errors import AlreadyExists, FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from sessionkit.jsonvalues import JsonValue, check_json
from sessionkit_server.common import failpoints, paging
from sessionkit_server.memory import tables as t
from sessionkit_server.memory.batching import EmbeddingBatcher
from sessionkit_server.memory.extraction import FactExtractor, MalformedOutput, Message, ProposedOperation
from sessionkit_server.memory.store import (
    MERGE,
    AddOutcome,
    ChangeRecord,
    Idempotency,
    MemoryRecord,
    MemoryStore,
    MergeInto,
    Owner,
    app_collection,
    owner_collections,
)
from sessionkit_server.memory.tokens import details_differ
from sessionkit_server.retrieval.embeddings import Embedder
from sessionkit_server.retrieval.fusion import FusionWeights, fused_score, recency, rrf_normalized
from sessionkit_server.retrieval.vector_index import VectorIndex, partition, partition_prefix

log = logging.getLogger("sessionkit.memory")
JsonObject = dict[str, JsonValue]
R = TypeVar("R")
S = TypeVar("S")


def now_us() -> int:
    return time.time_ns() // 1000


def normalize(text: str) -> str:
    """What counts as "the same text" for dedup: Unicode NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def content_hash(text: str) -> str:
    return hashlib.sha256(normalize(text).encode()).hexdigest()


@dataclass(frozen=True)
class MemorySettings:
    #: Short-term memories kept per session (the oldest are evicted beyond it).
    short_window: int = 100
    #: Optional lifetime of a short-term memory.
    short_ttl_seconds: int | None = None
    #: Cosine similarity at or above which a new memory is merged into its nearest neighbour.
    merge_threshold: float = 0.93
    max_text_bytes: int = 32 << 10
    max_limit: int = 100
    #: Fusion weights and the recency half-life (docs/MEMORY.md).
    weight_relevance: float = 0.75
    weight_quality: float = 0.15
    weight_recency: float = 0.10
    recency_half_life_days: float = 30.0
    #: Weight of the lexical ranking in the reciprocal rank fusion (the dense ranking's is 1): on
    #: paraphrased questions the lexical list is mostly noise (docs/MEMORY.md, "Retrieval quality").
    weight_lexical_rank: float = 0.5
    #: Most memories one AddMemories call may carry.
    max_batch_items: int = 1000
    #: Seconds between purges of idempotency records older than 24 hours.
    purge_interval_seconds: float = 300.0
    #: Existing memories shown to the extraction LLM (the best matches of the turn).
    extraction_context: int = 10
    #: Largest conversation turn ExtractMemories accepts (all messages' text together).
    max_turn_bytes: int = 128 << 10
    max_turn_messages: int = 50


@dataclass
class Hit:
    memory: MemoryRecord
    score: float
    semantic: float
    lexical: float
    quality: float
    recency: float


@dataclass
class AddResult:
    memory: MemoryRecord
    deduplicated: bool = False
    merged: bool = False
    evicted: list[str] = field(default_factory=list)


@dataclass
class Operation:
    """One operation of an extraction, as applied (or, in a dry run, as it would be)."""

    type: str  # "ADD", "UPDATE", "DELETE" or "NONE"
    fact: str
    #: ADD, UPDATE, NONE: the memory after it (None for a NONE naming no memory); DELETE: as it was.
    memory: MemoryRecord | None
    #: UPDATE: the memory's text before.
    old_text: str = ""


@dataclass
class ExtractResult:
    operations: list[Operation]
    model: str
    #: The LLM's output was unusable: the user's messages were stored as they are (metadata
    #: {"extraction": "failed"}).
    failed: bool = False


def _then(idem: Idempotency[R] | None, convert: Callable[[S], R]) -> Idempotency[S] | None:
    return None if idem is None else idem.before(convert)


@dataclass(frozen=True)
class NewMemory:
    """One item of a batch add (AddMemories)."""

    text: str
    memory_type: int = t.LONG
    quality: float | None = None
    metadata: JsonObject | None = None


#: Nearest neighbours looked at for a near-duplicate merge: the nearest may differ in a detail while
#: the next is a true rewording.
MERGE_CANDIDATES = 3


class MemoryService:
    def __init__(
        self,
        store: MemoryStore,
        index: VectorIndex,
        embedder: Embedder,
        settings: MemorySettings | None = None,
        extractor: FactExtractor | None = None,
    ) -> None:
        self.store = store
        self.index = index
        self.embedder = embedder
        self.settings = settings or MemorySettings()
        #: The LLM of ExtractMemories; None when the server has none configured.
        self.extractor = extractor
        self._drain_lock = asyncio.Lock()
        self._purger: asyncio.Task[None] | None = None
        #: Concurrent single adds share one model call (see services/memory/batching.py).
        self._add_embedder = EmbeddingBatcher(embedder)

    async def start(self) -> None:
        """Migrate the rows, move vectors of the single collection of old into partitions, then apply
        what a crash left in the outbox (rows written, vectors not yet)."""
        await self.store.start()
        await self.migrate_vectors()
        await self.drain_outbox()
        self._purger = asyncio.create_task(self._purge_forever(self.settings.purge_interval_seconds))

    async def close(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
            self._purger = None
        await self.index.close()
        await self.embedder.close()
        if self.extractor is not None:
            await self.extractor.close()

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

    # -- writes ---------------------------------------------------------------------------------------

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
        await self._replay(owner, idem)
        digest = content_hash(text)
        existing = await self._same_content(owner, memory_type, digest)
        if existing is not None:
            result = AddResult(existing, deduplicated=True)
            if idem is not None:
                await self.store.remember(owner, idem, result, now_us())
            return result
        vector = await self._add_embedder.embed_one(text)
        if not skip_merge and self.settings.merge_threshold < 1.0:
            merged = await self._merge_into_neighbour(
                owner,
                memory_type,
                text,
                vector,
                quality,
                meta,
                actor,
                _then(idem, lambda record: AddResult(record, merged=True)),
            )
            if merged is not None:
                return AddResult(merged, merged=True)
        record = self._new_record(owner, memory_type, text, digest, quality, meta, now_us())
        outcome: AddOutcome = await self.store.add(
            record,
            actor,
            self.settings.short_window,
            _then(idem, lambda o: AddResult(o.memory, deduplicated=o.deduplicated, evicted=o.evicted)),
        )
        failpoints.hit("memory.after_row_commit")
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
            _then(
                idem, lambda outs: self._batch_results(checked, digests, stored, first_of, slot, folded, outs)
            ),
        )
        failpoints.hit("memory.after_row_commit")
        # The vectors just computed, for the memories this call inserted (a merge target or an existing
        # duplicate keeps its own vector: its text is not this item's).
        fresh = {
            records[n].id: (records[n].content_hash, vector_of[n])
            for n, i in slot.items()
            if outcomes[i].memory.id == records[n].id
        }
        await self.drain_outbox(fresh)
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

    async def _same_content(self, owner: Owner, memory_type: int, digest: str) -> MemoryRecord | None:
        # A fast path only: the unique constraint is what guarantees one row under concurrency.
        return await self.store.by_hash(owner, memory_type, digest, now_us())

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
        neighbour differing in a detail (a number, date, weekday, name, negation: memory.tokens)
        is another fact, and merging would lose the new one."""
        (coll,) = owner_collections(owner, memory_type)
        threshold = self.settings.merge_threshold
        nearest = [
            hit for hit in await self.index.query(coll, vector, MERGE_CANDIDATES) if hit[1] >= threshold
        ]
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
                raise AlreadyExists(
                    "another memory in this scope already has this text", reason="MEMORY_EXISTS"
                ) from None
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
                owner, memory_id, now_us(), actor, expected_revision, _then(idem, lambda _: True)
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
        deleted = await self.store.clear(owner, memory_type, now_us(), actor, _then(idem, len), matches)
        await self.drain_outbox()
        return len(deleted)

    # -- LLM fact extraction ("mem0") -------------------------------------------------------------------

    async def extract(
        self,
        owner: Owner,
        messages: list[Message],
        memory_type: int = t.LONG,
        metadata: JsonObject | None = None,
        dry_run: bool = False,
        actor: str = "",
        idem: Idempotency[ExtractResult] | None = None,
    ) -> ExtractResult:
        """Have the LLM turn a conversation turn into memory operations against the owner's related
        memories, and apply them through add/update/delete (so dedup, merging, history and the outbox
        apply; history actor ``llm:<model>`` unless ``actor`` is given). An unusable LLM answer (after
        its retries) stores the turn's user messages as they are, with metadata
        ``{"extraction": "failed"}``: the user's text is never lost.

        With ``idem`` the key is claimed before the LLM is asked: a repeat gets the first response
        (``Replayed``), a concurrent repeat waits (retryable ``ServiceUnavailable``) and nothing is
        applied twice."""
        extractor = self.extractor
        if extractor is None:
            raise FailedPrecondition(
                "LLM fact extraction (memory_config provider 'mem0') is not configured on this server: "
                "set SESSIONKIT_LLM_BASE_URL to an OpenAI-compatible endpoint (e.g. "
                "http://localhost:11434/v1) and SESSIONKIT_LLM_MODEL, or OPENAI_API_KEY to use "
                "api.openai.com",
                reason="EXTRACTION_UNAVAILABLE",
            )
        turn = self._check_turn(messages)
        meta = self._check_metadata(metadata)
        await self._replay(owner, idem)
        if idem is not None:
            await self.store.claim(owner, idem.key, idem.method, now_us())
        done: list[Operation] = []
        try:
            result = await self._extract(extractor, owner, turn, memory_type, meta, dry_run, actor, done)
        except BaseException:
            if idem is not None:
                if done and not dry_run:
                    # Part of the turn was applied: that part is the key's response, so a retry does not
                    # apply it again.
                    partial = ExtractResult(done, extractor.model)
                    await self.store.finish(owner, idem.key, idem.encode(partial))
                else:
                    await self.store.release(owner, idem.key)
            raise
        if idem is not None:
            await self.store.finish(owner, idem.key, idem.encode(result))
        return result

    async def _extract(
        self,
        extractor: FactExtractor,
        owner: Owner,
        turn: list[Message],
        memory_type: int,
        meta: JsonObject,
        dry_run: bool,
        actor: str,
        done: list[Operation],
    ) -> ExtractResult:
        actor = actor or f"llm:{extractor.model}"
        related = await self._related(owner, turn, memory_type)
        by_id = {m.id: m for m in related}
        try:
            proposals = await extractor.extract(
                turn, [(m.id, m.text) for m in related], self.settings.max_text_bytes
            )
        except MalformedOutput as failure:
            log.warning(
                "extraction skipped: %s gave no usable answer in %d attempts; the user's messages are "
                "stored as they are (metadata extraction=failed)",
                extractor.model,
                failure.attempts,
                extra={
                    "model": extractor.model,
                    "attempts": failure.attempts,
                    "problems": failure.problems,
                    "app_name": owner.app_name,
                    "user_id": owner.user_id,
                },
            )
            await self._store_unextracted(owner, turn, memory_type, meta, dry_run, done)
            return ExtractResult(done, extractor.model, failed=True)
        for proposal in proposals:
            operation = await self._apply(owner, proposal, by_id, memory_type, meta, dry_run, actor)
            if operation is not None:
                done.append(operation)
        return ExtractResult(done, extractor.model)

    async def _related(self, owner: Owner, turn: list[Message], memory_type: int) -> list[MemoryRecord]:
        """The owner's memories of ``memory_type`` closest to the turn (what the LLM may change)."""
        said = [m.content for m in turn if m.role == "user"] or [m.content for m in turn]
        query = _truncate("\n".join(said), self.settings.max_text_bytes)
        if not query.strip():
            return []
        hits = await self.search(owner, query, memory_type, self.settings.extraction_context)
        return [hit.memory for hit in hits]

    async def _store_unextracted(
        self,
        owner: Owner,
        turn: list[Message],
        memory_type: int,
        meta: JsonObject,
        dry_run: bool,
        done: list[Operation],
    ) -> None:
        """The fallback of an unusable LLM answer: each user message stored as it is (never merged into
        another memory, which would drop its text)."""
        failed_meta: JsonObject = {**meta, "extraction": "failed"}
        for message in turn:
            if message.role != "user" or not message.content.strip():
                continue
            if dry_run:
                done.append(
                    Operation("ADD", message.content, self._preview(owner, memory_type, message.content))
                )
                continue
            added = await self.add(
                owner, message.content, memory_type, None, failed_meta, "extractor", skip_merge=True
            )
            done.append(Operation("NONE" if added.deduplicated else "ADD", message.content, added.memory))

    async def _apply(
        self,
        owner: Owner,
        proposal: ProposedOperation,
        shown: dict[str, MemoryRecord],
        memory_type: int,
        meta: JsonObject,
        dry_run: bool,
        actor: str,
    ) -> Operation | None:
        fact = proposal.fact
        if proposal.type == "ADD":
            if dry_run:
                return Operation("ADD", fact, self._preview(owner, memory_type, fact))
            added = await self.add(owner, fact, memory_type, None, meta, actor)
            # Already stored (exactly, or merged into a near-duplicate): the fact was known.
            kind = "NONE" if added.deduplicated or added.merged else "ADD"
            return Operation(kind, fact, added.memory)
        current = shown.get(proposal.memory_id)
        if proposal.type == "NONE":
            return Operation("NONE", fact, current)
        if current is None:  # parse_operations lets only the ids it showed through; never act on others
            log.warning(
                "extraction: not applied, the memory was not shown to the LLM",
                extra={"memory_id": proposal.memory_id, "operation": proposal.type},
            )
            return None
        if proposal.type == "UPDATE":
            if content_hash(fact) == current.content_hash:
                return Operation("NONE", fact, current)
            if dry_run:
                preview = MemoryRecord(
                    **{**current.__dict__, "text": fact, "content_hash": content_hash(fact)}
                )
                return Operation("UPDATE", fact, preview, current.text)
            try:
                updated = await self.update(owner, current.id, text=fact, actor=actor)
            except NotFound:
                log.warning("extraction: memory gone before its UPDATE", extra={"memory_id": current.id})
                return None
            except AlreadyExists:
                # Another memory of the scope already says exactly this: the fact is known.
                same = await self._same_content(owner, memory_type, content_hash(fact))
                return Operation("NONE", fact, same)
            return Operation("UPDATE", fact, updated, current.text)
        # DELETE
        if dry_run:
            return Operation("DELETE", fact, current)
        if not await self.delete(owner, current.id, allow_missing=True, actor=actor):
            log.warning("extraction: memory gone before its DELETE", extra={"memory_id": current.id})
            return None
        return Operation("DELETE", fact, current)

    def _preview(self, owner: Owner, memory_type: int, text: str) -> MemoryRecord:
        """What a dry run's ADD would store (no id: nothing is stored)."""
        now = now_us()
        return MemoryRecord(
            "", owner.app_name, owner.user_id, owner.session_id, memory_type, text.strip(),
            content_hash(text), 0.5, {}, now, now, None, 0,
        )  # fmt: skip

    def _check_turn(self, messages: list[Message]) -> list[Message]:
        if not messages:
            raise InvalidArgument(
                "no messages to extract memories from",
                violations=[FieldViolation("messages", "at least one message")],
            )
        if len(messages) > self.settings.max_turn_messages:
            raise InvalidArgument(
                "too many messages",
                violations=[FieldViolation("messages", f"at most {self.settings.max_turn_messages}")],
            )
        total = 0
        for n, message in enumerate(messages):
            if not message.role.strip():
                raise InvalidArgument(
                    "a message has no role",
                    violations=[FieldViolation(f"messages[{n}].role", "must not be empty")],
                )
            if "\x00" in message.content:
                raise InvalidArgument(
                    "invalid message", violations=[FieldViolation(f"messages[{n}].content", "contains NUL")]
                )
            size = len(message.content.encode())
            if size > self.settings.max_text_bytes:
                raise InvalidArgument(
                    "a message is too long",
                    violations=[
                        FieldViolation(
                            f"messages[{n}].content", f"{size} bytes; at most {self.settings.max_text_bytes}"
                        )
                    ],
                )
            total += size
        if total > self.settings.max_turn_bytes:
            raise InvalidArgument(
                "the conversation turn is too long",
                violations=[
                    FieldViolation("messages", f"{total} bytes; at most {self.settings.max_turn_bytes}")
                ],
            )
        if not any(m.content.strip() for m in messages):
            raise InvalidArgument(
                "every message is empty", violations=[FieldViolation("messages", "some text is needed")]
            )
        return [Message(m.role.strip(), m.content, m.name) for m in messages]

    async def _replay(self, owner: Owner, idem: Idempotency[Any] | None) -> None:
        """Check an idempotency key and raise ``Replayed`` when it already holds a response (the fast
        path; each write checks again in its own transaction)."""
        if idem is None:
            return
        if not idem.key or len(idem.key) > 128:
            raise InvalidArgument(
                "invalid idempotency_key",
                violations=[FieldViolation("idempotency_key", "1 to 128 characters")],
            )
        await self.store.replay(owner.app_name, owner.user_id, idem.key, idem.method, now_us())

    # -- reads ----------------------------------------------------------------------------------------

    async def get(self, owner: Owner, memory_id: str) -> MemoryRecord:
        record = await self.store.get(owner, memory_id, now_us())
        if record is None:
            raise NotFound(
                f"memory {memory_id!r} not found",
                reason="MEMORY_NOT_FOUND",
                metadata={"memory_id": memory_id},
            )
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
    ) -> list[Hit]:
        if not query.strip():
            raise InvalidArgument("empty query", violations=[FieldViolation("query", "must not be empty")])
        self._check_text(query, "query")
        if limit < 1 or limit > self.settings.max_limit:
            raise InvalidArgument(
                "invalid limit",
                violations=[FieldViolation("limit", f"must be between 1 and {self.settings.max_limit}")],
            )
        check = self._filter(metadata_filter, min_quality)
        k = max(limit * 4, 40)
        now = now_us()
        vector = await self.embedder.embed_one(query)
        dense, lexical = await asyncio.gather(
            self._dense(owner, memory_type, vector, k),
            self.store.lexical(owner, memory_type, query, k, now),
        )
        fused = rrf_normalized(
            [[i for i, _ in dense], [i for i, _ in lexical]],
            weights=[1.0, self.settings.weight_lexical_rank],
        )
        if not fused:
            return []
        semantic = dict(dense)
        top_lexical = max((score for _, score in lexical), default=0.0) or 1.0
        lexical_norm = {i: score / top_lexical for i, score in lexical}
        rows = await self.store.by_ids(owner, list(fused), now)  # the rows decide: scope, expiry, deletion
        s = self.settings
        weights = FusionWeights(s.weight_relevance, s.weight_quality, s.weight_recency)
        hits: list[Hit] = []
        for memory_id, relevance in fused.items():
            record = rows.get(memory_id)
            if record is None or not check(record):
                continue
            fresh = recency(max(0.0, (now - record.update_us) / 86_400e6), s.recency_half_life_days)
            hits.append(
                Hit(
                    record,
                    fused_score(relevance, record.quality, fresh, weights),
                    max(0.0, semantic.get(memory_id, 0.0)),
                    lexical_norm.get(memory_id, 0.0),
                    record.quality,
                    fresh,
                )
            )
        hits.sort(key=lambda h: -h.score)
        if min_score is not None:
            hits = [h for h in hits if h.score >= min_score]
        return hits[:limit]

    async def _dense(
        self, owner: Owner, memory_type: int | None, vector: list[float], k: int
    ) -> list[tuple[str, float]]:
        """The ``k`` nearest of the owner's partitions (the session's short-term and/or the user's
        long-term memories), best first."""
        found: list[tuple[str, float]] = []
        for coll in owner_collections(owner, memory_type):
            found.extend(await self.index.query(coll, vector, k))
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

    # -- the vector index -------------------------------------------------------------------------------

    async def drain_outbox(self, vectors: dict[str, tuple[str, list[float]]] | None = None) -> int:
        """Apply pending outbox entries to the vector index (idempotent: upserts and deletes by id).
        ``vectors`` are embeddings already computed, by memory id, valid for the given content hash."""
        vectors = vectors or {}
        applied = 0
        async with self._drain_lock:
            while True:
                pending = await self.store.pending()
                if not pending:
                    return applied
                rows = await self.store.rows_for_index([entry.memory_id for entry in pending])
                upserts: dict[str, dict[str, MemoryRecord]] = defaultdict(dict)
                deletes: dict[str, set[str]] = defaultdict(set)
                for entry in pending:
                    record = rows.get(entry.memory_id)  # the row decides: gone means delete
                    if record is not None:
                        upserts[record.vector_collection][record.id] = record
                    else:
                        # An entry from before partitions has no collection: its vector is in the
                        # app's collection of old (or was not moved, its row being gone).
                        deletes[entry.vector_collection or app_collection(entry.app_name)].add(
                            entry.memory_id
                        )
                for coll, records in upserts.items():
                    todo = [r for r in records.values() if vectors.get(r.id, ("",))[0] != r.content_hash]
                    fresh = await self.embedder.embed([r.text for r in todo]) if todo else []
                    by_id = {r.id: v for r, v in zip(todo, fresh, strict=True)}
                    ids = list(records)
                    await self.index.upsert(
                        coll,
                        ids,
                        [by_id[i] if i in by_id else vectors[i][1] for i in ids],
                        [_vector_metadata(records[i]) for i in ids],
                    )
                for coll, gone in deletes.items():
                    await self.index.delete(coll, sorted(gone))
                await self.store.done([entry.id for entry in pending])
                applied += len(pending)

    async def migrate_vectors(self, page: int = 1000) -> int:
        """Move the vectors of each app's single collection of old (before partitions, filtered by user
        and bucket) into the per-user and per-session partitions, then drop it. Vectors are copied, not
        re-embedded; those whose row is gone are left behind. Safe to repeat after a crash (upserts by
        id; the old collection is dropped last). Returns the vectors moved."""
        moved = 0
        for app_name in await self.store.apps():
            legacy = app_collection(app_name)
            if not await self.index.exists(legacy):
                continue
            log.warning("moving memory vectors into per-user partitions", extra={"app_name": app_name})
            offset = 0
            while True:
                entries = await self.index.entries(legacy, offset, page)
                if not entries:
                    break
                offset += len(entries)
                rows = await self.store.rows_for_index([e.id for e in entries])
                by_collection: dict[str, list[tuple[MemoryRecord, list[float]]]] = defaultdict(list)
                for entry in entries:
                    record = rows.get(entry.id)
                    if record is not None:
                        by_collection[record.vector_collection].append((record, entry.vector))
                for coll, items in by_collection.items():
                    await self.index.upsert(
                        coll,
                        [r.id for r, _ in items],
                        [v for _, v in items],
                        [_vector_metadata(r) for r, _ in items],
                    )
                    moved += len(items)
            await self.index.drop(legacy)
            log.warning("moved memory vectors", extra={"app_name": app_name, "count": moved})
        return moved

    async def reindex(self, app_name: str | None) -> tuple[int, int]:
        """Rebuild the vector index from the rows (the source of truth): every partition of the app
        (of every app when None) is dropped, then each row re-embedded into its partition.
        Returns (rows scanned, vectors written)."""
        await self.drain_outbox()
        apps = [app_name] if app_name is not None else await self.store.apps()
        # Every app's partitions start with the encoded "memories:" (see vector_index.partition).
        prefix = (
            partition_prefix(app_collection(app_name))
            if app_name is not None
            else partition(app_collection(""))
        )
        for coll in await self.index.collections(prefix):
            await self.index.drop(coll)
        for app in apps:
            await self.index.drop(app_collection(app))  # a collection from before partitions
        scanned = written = 0
        after = 0
        while True:
            rows = await self.store.all_rows(app_name, after, 256)
            if not rows:
                break
            after = rows[-1][0]
            by_collection: dict[str, list[MemoryRecord]] = defaultdict(list)
            for _, record in rows:
                by_collection[record.vector_collection].append(record)
            vectors = await self.embedder.embed([r.text for _, r in rows])
            vector_of = {r.id: v for (_, r), v in zip(rows, vectors, strict=True)}
            for coll, records in by_collection.items():
                await self.index.upsert(
                    coll,
                    [r.id for r in records],
                    [vector_of[r.id] for r in records],
                    [_vector_metadata(r) for r in records],
                )
                written += len(records)
            scanned += len(rows)
        return scanned, written

    # -- validation -----------------------------------------------------------------------------------

    def _check_text(self, text: str, field_name: str = "text") -> str:
        if not text or not text.strip():
            raise InvalidArgument(
                f"empty {field_name}", violations=[FieldViolation(field_name, "must not be empty")]
            )
        size = len(text.encode())
        if size > self.settings.max_text_bytes:
            raise InvalidArgument(
                f"{field_name} is too long",
                violations=[
                    FieldViolation(field_name, f"{size} bytes; at most {self.settings.max_text_bytes}")
                ],
            )
        if "\x00" in text:
            raise InvalidArgument(
                f"invalid {field_name}", violations=[FieldViolation(field_name, "contains NUL")]
            )
        return text.strip()

    @staticmethod
    def _check_quality(quality: float, field_name: str = "quality_score") -> float:
        if (
            not (isinstance(quality, (int, float)) and not isinstance(quality, bool))
            or not 0.0 <= quality <= 1.0
        ):
            raise InvalidArgument(
                "invalid quality score",
                violations=[FieldViolation(field_name, f"{quality!r} is not between 0 and 1")],
            )
        return float(quality)

    @staticmethod
    def _check_metadata(metadata: JsonObject | None) -> JsonObject:
        checked = check_json(metadata or {}, "metadata")
        if not isinstance(checked, dict):
            raise InvalidArgument("metadata must be a JSON object")
        return checked

    def _filter(self, metadata_filter: JsonObject | None, min_quality: float | None) -> Any:
        wanted = self._check_metadata(metadata_filter)
        for key, value in wanted.items():
            if isinstance(value, (dict, list)):
                raise InvalidArgument(
                    "invalid metadata_filter",
                    violations=[
                        FieldViolation(f"metadata_filter.{key}", "values are matched exactly: use a scalar")
                    ],
                )
        floor = None if min_quality is None else self._check_quality(min_quality, "min_quality")

        def check(record: MemoryRecord) -> bool:
            if floor is not None and record.quality < floor:
                return False
            return all(record.metadata.get(key) == value for key, value in wanted.items())

        return check


def _vector_metadata(record: MemoryRecord) -> dict[str, str | int | float | bool]:
    """What the index stores next to a vector: who it belongs to, for inspecting the index (queries
    need no filter: each partition holds one owner's vectors). Only what never changes, so a memory's
    vector is rewritten only when its text changes."""
    return {"user_id": record.user_id, "bucket": record.bucket, "memory_type": record.memory_type}


def _truncate(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` bytes of UTF-8, on a character boundary."""
    return text.encode()[:max_bytes].decode(errors="ignore")
