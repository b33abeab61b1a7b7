"""The memory service's foundation: its dependencies and settings, the results it answers with,
input validation, the idempotency fast path and the vector outbox. The behaviours build on it, one
file each: search.py (reads, search and context), writes.py (adds with dedup and merging, updates,
deletes), extract_turn.py (LLM fact extraction, "mem0"), service.py (lifecycle and vector maintenance)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from sessionkit.errors import FieldViolation, InvalidArgument
from sessionkit.jsonvalues import JsonValue, check_json
from sessionkit_server.common import checks
from sessionkit_server.common.idempotency import Idempotency, check_key
from sessionkit_server.common.identity import Owner
from sessionkit_server.common.timestamps import now_us
from sessionkit_server.common.vector_outbox import Computed, VectorOutbox
from sessionkit_server.memory import tables as t
from sessionkit_server.memory.batching import EmbeddingBatcher
from sessionkit_server.memory.extraction import FactExtractor
from sessionkit_server.memory.records import MemoryRecord
from sessionkit_server.memory.store import MemoryStore
from sessionkit_server.retrieval.coalesce import Coalescer
from sessionkit_server.retrieval.embeddings import Embedder
from sessionkit_server.retrieval.expansion import QueryExpander
from sessionkit_server.retrieval.explain import Explanation
from sessionkit_server.retrieval.vector_index import VectorIndex

log = logging.getLogger("sessionkit.memory")
JsonObject = dict[str, JsonValue]

__all__ = ["now_us"]


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
    #: Weight of the lexical ranking in the reciprocal rank fusion (the dense ranking's is 1) and the
    #: fusion's constant k: fitted by bench/fit_fusion.py on LoCoMo dev and the synthetic memory and
    #: knowledge sets together (docs/MEMORY.md, "Fusion fitted on data"). k=10 lets the top ranks of
    #: either list count more than the constant 60 did (0.5 / 60 before: recall@5 0.551 -> 0.637 on
    #: LoCoMo dev, 0.878 -> 0.887 on the synthetic set, offline).
    weight_lexical_rank: float = 1.0
    rrf_k: int = 10
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
    #: Only when the search was asked to explain (``explain=True``).
    explanation: Explanation | None = None


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


class MemoryBase:
    def __init__(
        self,
        store: MemoryStore,
        index: VectorIndex,
        embedder: Embedder,
        settings: MemorySettings | None = None,
        extractor: FactExtractor | None = None,
        expander: QueryExpander | None = None,
    ) -> None:
        self.store = store
        self.index = index
        self.embedder = embedder
        self.settings = settings or MemorySettings()
        #: The LLM of ExtractMemories; None when the server has none configured.
        self.extractor = extractor
        #: The LLM that rewrites search queries (SESSIONKIT_SEARCH_QUERY_EXPANSION); None: off.
        self.expander = expander
        self.vectors = VectorOutbox(
            store, index, embedder, namespace="memories", done_rows=store.done_upserts
        )
        self._purger: asyncio.Task[None] | None = None
        #: Concurrent single adds share one model call (see services/memory/batching.py).
        self._add_embedder = EmbeddingBatcher(embedder)
        #: Concurrent adds' same-content reads share one read transaction, and their near-duplicate
        #: checks one vector query per partition (sessionkit_server.retrieval.coalesce.Coalescer).
        self._same_contents: Coalescer[tuple[Owner, int, str], MemoryRecord | None] = Coalescer(
            lambda keys: self.store.by_hash_many(keys, now_us())
        )
        self._neighbours: Coalescer[tuple[str, list[float]], list[tuple[str, float]]] = Coalescer(
            self._nearest_many
        )

    async def _nearest_many(self, asked: list[tuple[str, list[float]]]) -> list[list[tuple[str, float]]]:
        """The ``MERGE_CANDIDATES`` nearest of each (partition, vector), in order: one query per
        partition (each vector is looked up in its own owner's partition only)."""
        by_collection: dict[str, list[int]] = {}
        for n, (coll, _) in enumerate(asked):
            by_collection.setdefault(coll, []).append(n)
        found: list[list[tuple[str, float]]] = [[] for _ in asked]
        for coll, members in by_collection.items():
            answers = await self.index.query_many(coll, [asked[n][1] for n in members], MERGE_CANDIDATES)
            for n, answer in zip(members, answers, strict=True):
                found[n] = answer
        return found

    async def drain_outbox(self, vectors: Computed | None = None) -> int:
        """Apply pending outbox entries to the vector index (sessionkit_server.common.vector_outbox).
        ``vectors`` are embeddings already computed, by memory id, with the content hash they are for."""
        return await self.vectors.drain(vectors)

    async def _replay(self, owner: Owner, idem: Idempotency[Any] | None) -> None:
        """Check an idempotency key and raise ``Replayed`` when it already holds a response (the fast
        path; each write checks again in its own transaction)."""
        if idem is None:
            return
        check_key(idem.key)
        await self.store.replay(owner.app_name, owner.user_id, idem.key, idem.method, now_us())

    def _check_text(self, text: str, field_name: str = "text") -> str:
        if not text or not text.strip():
            raise InvalidArgument(
                f"empty {field_name}", violations=[FieldViolation(field_name, "must not be empty")]
            )
        checks.text(text, field_name)  # valid Unicode without NUL, before encode() can fail on it
        size = len(text.encode())
        if size > self.settings.max_text_bytes:
            raise InvalidArgument(
                f"{field_name} is too long",
                violations=[
                    FieldViolation(field_name, f"{size} bytes; at most {self.settings.max_text_bytes}")
                ],
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
