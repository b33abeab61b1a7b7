"""The knowledge service's foundation: settings, results, scopes, validation, the idempotency fast
path and the vector outbox. Ingestion is in ingest.py; sources, search and vector maintenance in
service.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sessionkit.errors import FieldViolation, InvalidArgument
from sessionkit.ids import check_id
from sessionkit.jsonvalues import JsonValue, check_json
from sessionkit_server.common import checks
from sessionkit_server.common.idempotency import Idempotency, check_key
from sessionkit_server.common.identity import Owner
from sessionkit_server.common.vector_outbox import VectorOutbox
from sessionkit_server.knowledge import tables as t
from sessionkit_server.knowledge.fetch import FetchSettings
from sessionkit_server.knowledge.records import ChunkRecord, Scope, SourceRecord, app_collection
from sessionkit_server.knowledge.store import KnowledgeStore
from sessionkit_server.retrieval.coalesce import CoalescingEmbedder
from sessionkit_server.retrieval.embeddings import Embedder
from sessionkit_server.retrieval.expansion import QueryExpander
from sessionkit_server.retrieval.explain import Explanation
from sessionkit_server.retrieval.vector_index import VectorIndex

log = logging.getLogger("sessionkit.knowledge")
JsonObject = dict[str, JsonValue]

#: Ingestion stages (KnowledgeIngestionProgress.Stage).
RECEIVING, FETCHING, PARSING, CHUNKING, EMBEDDING, STORING = 1, 2, 3, 4, 5, 6
CREATED, UPDATED, UNCHANGED = 1, 2, 3
EMBED_BATCH = 64
#: Chunks read, embedded and written per step of a reindex.
REINDEX_BATCH = 256


@dataclass(frozen=True)
class KnowledgeSettings:
    #: Largest uploaded file.
    max_upload_bytes: int = 50 << 20
    #: Largest TEXT source.
    max_text_bytes: int = 10 << 20
    #: Most chunks one source may have.
    max_chunks_per_source: int = 20_000
    max_limit: int = 100
    fetch: FetchSettings = field(default_factory=FetchSettings)
    #: Seconds between purges of idempotency records older than 24 hours.
    purge_interval_seconds: float = 300.0
    #: Weight of the lexical ranking in the rank fusion (the dense ranking's is 1). 0.75 with k 5
    #: (was 0.5 with k 10), fitted on SciFact train (bench/fit_scifact.py) and the synthetic set's what-if
    #: rows (bench/knowledge_quality.py) together, on the same candidate lists: SciFact 0.7070 -> 0.7162
    #: (above the plain RRF baseline's 0.710) and the synthetic set 0.926 -> 0.929. A heavier lexical
    #: weight gains more on SciFact (1.0 / 10: 0.7220) but loses on the synthetic set's paraphrased
    #: questions, where the lexical list is mostly noise (0.911); a small k keeps a chunk that dense
    #: ranks first ahead of one both rank fairly high (docs/KNOWLEDGE.md, SciFact section).
    weight_lexical_rank: float = 0.75
    #: The RRF constant k of that fusion (see weight_lexical_rank).
    rrf_k: int = 5


@dataclass
class Progress:
    stage: int
    bytes_read: int = 0
    bytes_total: int = 0
    chunks_created: int = 0
    chunks_embedded: int = 0
    chunks_total: int = 0


ProgressFn = Callable[[Progress], None]


@dataclass
class Content:
    """What to ingest: the raw bytes and how they were added."""

    kind: int
    name: str
    data: bytes
    content_type: str
    uri: str = ""


@dataclass
class IngestResult:
    source: SourceRecord
    outcome: int
    chunks_added: int
    chunks_removed: int
    duration_s: float


@dataclass
class Hit:
    chunk: ChunkRecord
    source: SourceRecord
    score: float
    semantic: float
    lexical: float
    #: Only when the search was asked to explain (``explain=True``).
    explanation: Explanation | None = None


def collection(app_name: str) -> str:
    """The app's knowledge vectors' logical name (its scopes' partitions are named after it)."""
    return app_collection(app_name)


def scope_of(owner: Owner, kind: int, collection_name: str = "", field_name: str = "scope") -> Scope:
    """The stored scope for a requested kind (0 = SESSION), as seen from ``owner``."""
    kind = kind or t.SESSION
    if kind != t.COLLECTION and collection_name:
        raise InvalidArgument(
            "collection given for a non-collection scope",
            violations=[FieldViolation(f"{field_name}.collection", "only with kind COLLECTION")],
        )
    if kind == t.SESSION:
        return Scope(t.SESSION, owner.user_id, owner.session_id)
    if kind == t.USER:
        return Scope(t.USER, owner.user_id, "")
    if kind == t.COLLECTION:
        return Scope(t.COLLECTION, "", check_id(f"{field_name}.collection", collection_name))
    raise InvalidArgument(
        "invalid scope", violations=[FieldViolation(f"{field_name}.kind", f"unknown {kind}")]
    )


def default_scopes(owner: Owner) -> list[Scope]:
    return [scope_of(owner, t.SESSION), scope_of(owner, t.USER)]


class KnowledgeBase:
    def __init__(
        self,
        store: KnowledgeStore,
        index: VectorIndex,
        embedder: Embedder,
        settings: KnowledgeSettings | None = None,
        owns_retrieval: bool = True,
        expander: QueryExpander | None = None,
    ) -> None:
        self.store = store
        self.index = index
        self.embedder = embedder
        self.settings = settings or KnowledgeSettings()
        self.owns_retrieval = owns_retrieval
        #: The LLM that rewrites search queries (SESSIONKIT_SEARCH_QUERY_EXPANSION); None: off. Its own
        #: (closed with the service), also when the index and embedder are memory's.
        self.expander = expander
        #: Chunk embeddings of concurrent ingestions share model calls (a folder added as a batch).
        self.chunk_embedder = CoalescingEmbedder(embedder)
        self.vectors = VectorOutbox(
            store, index, embedder, namespace="knowledge", batch=REINDEX_BATCH, done_rows=store.done_upserts
        )
        self._purger: asyncio.Task[None] | None = None

    async def drain_outbox(self, vectors: dict[str, list[float]] | None = None) -> int:
        """Apply pending outbox entries to the vector index (sessionkit_server.common.vector_outbox).
        ``vectors``: embeddings already computed, by chunk id (a chunk's text never changes)."""
        return await self.vectors.drain({i: ("", v) for i, v in (vectors or {}).items()})

    async def replay(self, owner: Owner, idem: Idempotency[Any] | None) -> None:
        """Check an idempotency key and raise ``Replayed`` with the first response when it already
        holds one (the fast path: each write checks again in its own transaction)."""
        if idem is None:
            return
        check_key(idem.key)
        await self.store.replay(owner.app_name, owner.user_id, idem.key, idem.method)

    @staticmethod
    def _all_visible(owner: Owner, scope: Scope) -> list[Scope]:
        scopes = default_scopes(owner)
        if scope.kind == t.COLLECTION:
            scopes.append(scope)
        return scopes

    @staticmethod
    def _check_name(name: str) -> str:
        if not 1 <= len(name) <= 512:
            raise InvalidArgument(
                "a source id or name is needed",
                violations=[FieldViolation("name", "1 to 512 characters (or give source_id)")],
            )
        return checks.text(name, "name")


def _check_metadata(metadata: JsonObject | None) -> JsonObject:
    checked = check_json(metadata or {}, "metadata")
    if not isinstance(checked, dict):
        raise InvalidArgument("metadata must be a JSON object")
    return checked


def _check_filter(metadata_filter: JsonObject | None) -> JsonObject:
    wanted = _check_metadata(metadata_filter)
    for key, value in wanted.items():
        if isinstance(value, (dict, list)):
            raise InvalidArgument(
                "invalid metadata_filter",
                violations=[
                    FieldViolation(f"metadata_filter.{key}", "values are matched exactly: use a scalar")
                ],
            )
    return wanted
