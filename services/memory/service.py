"""The memory service's business layer: validation, scopes, dedup and merging, the vector outbox,
hybrid search and context building.

Search ranks by a documented fusion (docs/MEMORY.md): dense cosine similarity (Chroma) and lexical
relevance (SQLite FTS5 bm25 / PostgreSQL ts_rank_cd) are fused by reciprocal rank, then combined with
the memory's quality score and its recency (services.retrieval.fusion)."""

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

from services.common import failpoints, paging
from services.memory import tables as t
from services.memory.extraction import FactExtractor, MalformedOutput, Message, ProposedOperation
from services.memory.store import (
    MERGE,
    AddOutcome,
    ChangeRecord,
    Idempotency,
    MemoryRecord,
    MemoryStore,
    Owner,
)
from services.retrieval.embeddings import Embedder
from services.retrieval.fusion import FusionWeights, fused_score, recency, rrf_normalized
from services.retrieval.vector_index import VectorIndex
from sessionkit.errors import AlreadyExists, FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from sessionkit.jsonvalues import JsonValue, check_json

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


def collection(app_name: str) -> str:
    return f"memories:{app_name}"


def buckets(owner: Owner, memory_type: int | None) -> list[str]:
    short, long = f"short:{owner.session_id}", "long"
    return [short] if memory_type == t.SHORT else [long] if memory_type == t.LONG else [short, long]


def where(owner: Owner, memory_type: int | None) -> dict[str, Any]:
    return {"$and": [{"user_id": owner.user_id}, {"bucket": {"$in": buckets(owner, memory_type)}}]}


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

    async def start(self) -> None:
        """Migrate, then apply what a crash left in the outbox (rows written, vectors not yet)."""
        await self.store.start()
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
        vector = await self.embedder.embed_one(text)
        if not skip_merge and self.settings.merge_threshold < 1.0:
            merged = await self._merge_into_neighbour(
                owner,
                memory_type,
                vector,
                quality,
                meta,
                actor,
                _then(idem, lambda record: AddResult(record, merged=True)),
            )
            if merged is not None:
                return AddResult(merged, merged=True)
        now = now_us()
        ttl = self.settings.short_ttl_seconds if memory_type == t.SHORT else None
        record = MemoryRecord(
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
        outcome: AddOutcome = await self.store.add(
            record,
            actor,
            self.settings.short_window,
            _then(idem, lambda o: AddResult(o.memory, deduplicated=o.deduplicated, evicted=o.evicted)),
        )
        failpoints.hit("memory.after_row_commit")
        await self.drain_outbox({outcome.memory.id: (outcome.memory.content_hash, vector)})
        return AddResult(outcome.memory, deduplicated=outcome.deduplicated, evicted=outcome.evicted)

    async def _same_content(self, owner: Owner, memory_type: int, digest: str) -> MemoryRecord | None:
        # A fast path only: the unique constraint is what guarantees one row under concurrency.
        return await self.store.by_hash(owner, memory_type, digest, now_us())

    async def _merge_into_neighbour(
        self,
        owner: Owner,
        memory_type: int,
        vector: list[float],
        quality: float,
        meta: JsonObject,
        actor: str,
        idem: Idempotency[MemoryRecord] | None = None,
    ) -> MemoryRecord | None:
        nearest = await self.index.query(collection(owner.app_name), vector, 1, where(owner, memory_type))
        if not nearest or nearest[0][1] < self.settings.merge_threshold:
            return None
        current = await self.store.get(owner, nearest[0][0], now_us())
        if current is None:
            return None  # a vector the outbox has not removed yet
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
        self, owner: Owner, memory_type: int | None, actor: str = "", idem: Idempotency[int] | None = None
    ) -> int:
        await self._replay(owner, idem)
        deleted = await self.store.clear(owner, memory_type, now_us(), actor, _then(idem, len))
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
            self.index.query(collection(owner.app_name), vector, k, where(owner, memory_type)),
            self.store.lexical(owner, memory_type, query, k, now),
        )
        fused = rrf_normalized([[i for i, _ in dense], [i for i, _ in lexical]])
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
                rows = await self.store.rows_for_index([memory_id for _, memory_id, _, _ in pending])
                upserts: dict[str, dict[str, MemoryRecord]] = defaultdict(dict)
                deletes: dict[str, set[str]] = defaultdict(set)
                for _, memory_id, app_name, _ in pending:
                    record = rows.get(memory_id)  # the row decides: gone means delete
                    if record is None:
                        deletes[collection(app_name)].add(memory_id)
                    else:
                        upserts[collection(app_name)][memory_id] = record
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
                await self.store.done([outbox_id for outbox_id, _, _, _ in pending])
                applied += len(pending)

    async def reindex(self, app_name: str | None) -> tuple[int, int]:
        """Rebuild the vector index from the rows (the source of truth): (rows scanned, vectors written)."""
        await self.drain_outbox()
        scanned = written = 0
        dropped: set[str] = set()
        after = 0
        while True:
            rows = await self.store.all_rows(app_name, after, 256)
            if not rows:
                break
            after = rows[-1][0]
            by_collection: dict[str, list[MemoryRecord]] = defaultdict(list)
            for _, record in rows:
                by_collection[collection(record.app_name)].append(record)
            for coll, records in by_collection.items():
                if coll not in dropped:
                    await self.index.drop(coll)
                    dropped.add(coll)
                vectors = await self.embedder.embed([r.text for r in records])
                await self.index.upsert(
                    coll, [r.id for r in records], vectors, [_vector_metadata(r) for r in records]
                )
                written += len(records)
            scanned += len(rows)
        if app_name is not None and collection(app_name) not in dropped:
            await self.index.drop(collection(app_name))
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
    return {
        "user_id": record.user_id,
        "bucket": record.bucket,
        "memory_type": record.memory_type,
        "quality": record.quality,
    }


def _truncate(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` bytes of UTF-8, on a character boundary."""
    return text.encode()[:max_bytes].decode(errors="ignore")
