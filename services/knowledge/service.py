"""The knowledge service's business layer: scopes, ingestion (receive or fetch, parse, chunk, embed,
store), content-hash idempotency, atomic replacement, the vector outbox, and hybrid search.

Search ranks like memory search (docs/MEMORY.md): dense cosine similarity (Chroma) and lexical
relevance (SQLite FTS5 bm25 / PostgreSQL ts_rank_cd) fused by reciprocal rank
(sessionkit_server.retrieval.fusion.rrf_normalized). Knowledge chunks have no quality or recency, so the score
is the normalized RRF value itself."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import posixpath
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sessionkit.errors import FieldViolation, InvalidArgument, NotFound, ResourceExhausted
from sessionkit.ids import check_id
from sessionkit.jsonvalues import JsonValue, check_json
from sessionkit_server.common import paging
from sessionkit_server.knowledge import chunking, parsing
from sessionkit_server.knowledge import tables as t
from sessionkit_server.knowledge.fetch import FetchSettings, check_url, fetch
from sessionkit_server.knowledge.store import (
    ChunkRecord,
    KnowledgeStore,
    Replaced,
    Scope,
    SourceRecord,
    app_collection,
    vector_collection,
)
from sessionkit_server.memory.store import Idempotency, Owner
from sessionkit_server.retrieval.embeddings import Embedder
from sessionkit_server.retrieval.fusion import rrf_normalized
from sessionkit_server.retrieval.vector_index import VectorIndex, partition, partition_prefix

log = logging.getLogger("sessionkit.knowledge")
JsonObject = dict[str, JsonValue]

#: Ingestion stages (KnowledgeIngestionProgress.Stage).
RECEIVING, FETCHING, PARSING, CHUNKING, EMBEDDING, STORING = 1, 2, 3, 4, 5, 6
CREATED, UPDATED, UNCHANGED = 1, 2, 3
EMBED_BATCH = 64
#: Chunks read, embedded and written per step of a reindex.
REINDEX_BATCH = 256
R = TypeVar("R")
S = TypeVar("S")


def now_us() -> int:
    return time.time_ns() // 1000


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
    #: Weight of the lexical ranking in the rank fusion (the dense ranking's is 1). 0.5 as in the
    #: memory service: on paraphrased questions the lexical list is mostly noise, and with equal
    #: weights a chunk ranked fairly high by both outranks the one dense ranks first (measured in
    #: docs/KNOWLEDGE.md, "Retrieval quality", and docs/MEMORY.md).
    weight_lexical_rank: float = 0.5


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


def _then(idem: Idempotency[R] | None, convert: Callable[[S], R]) -> Idempotency[S] | None:
    return None if idem is None else idem.before(convert)


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


class KnowledgeService:
    def __init__(
        self,
        store: KnowledgeStore,
        index: VectorIndex,
        embedder: Embedder,
        settings: KnowledgeSettings | None = None,
        owns_retrieval: bool = True,
    ) -> None:
        self.store = store
        self.index = index
        self.embedder = embedder
        self.settings = settings or KnowledgeSettings()
        self.owns_retrieval = owns_retrieval
        self._drain_lock = asyncio.Lock()
        self._purger: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Migrate, then apply what a crash left in the outbox (rows written, vectors not yet), and
        move vectors of the app-wide collections of old into per-scope partitions."""
        await self.store.start()
        await self.drain_outbox()
        await self.migrate_vectors()
        self._purger = asyncio.create_task(self._purge_forever(self.settings.purge_interval_seconds))

    async def close(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
            self._purger = None
        if self.owns_retrieval:
            await self.index.close()
            await self.embedder.close()

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

    async def replay(self, owner: Owner, idem: Idempotency[Any] | None) -> None:
        """Check an idempotency key and raise ``Replayed`` with the first response when it already
        holds one (the fast path: each write checks again in its own transaction)."""
        if idem is None:
            return
        if not idem.key or len(idem.key) > 128:
            raise InvalidArgument(
                "invalid idempotency_key",
                violations=[FieldViolation("idempotency_key", "1 to 128 characters")],
            )
        await self.store.replay(owner.app_name, owner.user_id, idem.key, idem.method)

    # -- ingestion ------------------------------------------------------------------------------------

    async def add_text(
        self,
        owner: Owner,
        scope: Scope,
        text: str,
        name: str,
        content_type: str,
        chunker: chunking.ChunkerConfig,
        metadata: JsonObject | None,
        force: bool,
        progress: ProgressFn,
        idem: Idempotency[IngestResult] | None = None,
    ) -> IngestResult:
        await self.replay(owner, idem)
        if not text.strip():
            raise InvalidArgument("empty text", violations=[FieldViolation("text", "must not be empty")])
        data = text.encode()
        if len(data) > self.settings.max_text_bytes:
            raise ResourceExhausted(
                f"text is over the size limit ({len(data)} bytes; at most {self.settings.max_text_bytes})",
                reason="SOURCE_TOO_LARGE",
                metadata={"limit_bytes": str(self.settings.max_text_bytes)},
            )
        content_type = (content_type or "text/plain").split(";")[0].strip().lower()
        if content_type not in ("text/plain", "text/markdown"):
            raise InvalidArgument(
                f"unsupported content_type {content_type!r} for text",
                reason="UNSUPPORTED_CONTENT_TYPE",
                violations=[FieldViolation("content_type", "text/plain or text/markdown")],
            )
        digest = hashlib.sha256(data).hexdigest()
        name = name or f"text-{digest[:12]}"
        progress(Progress(PARSING, len(data), len(data)))
        content = Content(t.TEXT, name, data, content_type)
        return await self._ingest(owner, scope, content, chunker, metadata, force, progress, idem)

    async def add_url(
        self,
        owner: Owner,
        scope: Scope,
        url: str,
        name: str,
        content_type: str,
        chunker: chunking.ChunkerConfig,
        metadata: JsonObject | None,
        force: bool,
        progress: ProgressFn,
        idem: Idempotency[IngestResult] | None = None,
    ) -> IngestResult:
        await self.replay(owner, idem)
        check_url(url)
        progress(Progress(FETCHING))
        fetched = await fetch(
            url, self.settings.fetch, lambda read, total: progress(Progress(FETCHING, read, total))
        )
        declared = content_type or fetched.content_type
        mime = parsing.detect_type(posixpath.basename(fetched.url.split("?")[0]), declared, fetched.data)
        content = Content(t.URL, name or url.strip(), fetched.data, mime, fetched.url)
        return await self._ingest(owner, scope, content, chunker, metadata, force, progress, idem)

    async def add_file(
        self,
        owner: Owner,
        scope: Scope,
        file_name: str,
        name: str,
        content_type: str,
        declared_size: int,
        sha256: str,
        parts: AsyncIterator[bytes],
        chunker: chunking.ChunkerConfig,
        metadata: JsonObject | None,
        force: bool,
        progress: ProgressFn,
        idem: Idempotency[IngestResult] | None = None,
    ) -> IngestResult:
        """Receive an uploaded file's bytes, check them against the header, and ingest them. (A repeat
        of an idempotency key is answered before the bytes are read: see the servicer.)"""
        await self.replay(owner, idem)
        base = posixpath.basename(file_name.replace("\\", "/"))
        if not base:
            raise InvalidArgument(
                "empty file name", violations=[FieldViolation("header.file_name", "must name the file")]
            )
        limit = self.settings.max_upload_bytes
        if declared_size > limit:
            raise self._too_large(base, declared_size)
        body = bytearray()
        progress(Progress(RECEIVING, 0, declared_size))
        async for part in parts:
            body.extend(part)
            if len(body) > limit:
                raise self._too_large(base, len(body))
            progress(Progress(RECEIVING, len(body), declared_size))
        data = bytes(body)
        if declared_size and len(data) != declared_size:
            raise InvalidArgument(
                f"{base!r}: received {len(data)} bytes, the header declared {declared_size}",
                violations=[FieldViolation("header.size_bytes", "must match the bytes sent")],
            )
        if sha256 and hashlib.sha256(data).hexdigest() != sha256.lower():
            raise InvalidArgument(
                f"{base!r}: the bytes received do not match header.sha256",
                violations=[FieldViolation("header.sha256", "must be the file's SHA-256")],
            )
        if not data:
            raise InvalidArgument(f"{base!r} is empty", violations=[FieldViolation("chunk", "no bytes sent")])
        mime = parsing.detect_type(base, content_type, data)
        content = Content(t.FILE, name or base, data, mime)
        return await self._ingest(owner, scope, content, chunker, metadata, force, progress, idem)

    def _too_large(self, name: str, size: int) -> ResourceExhausted:
        limit = self.settings.max_upload_bytes
        return ResourceExhausted(
            f"{name!r} is over the upload limit ({size} bytes; at most {limit})",
            reason="SOURCE_TOO_LARGE",
            metadata={"name": name, "limit_bytes": str(limit)},
        )

    async def _ingest(
        self,
        owner: Owner,
        scope: Scope,
        content: Content,
        chunker: chunking.ChunkerConfig,
        metadata: JsonObject | None,
        force: bool,
        progress: ProgressFn,
        idem: Idempotency[IngestResult] | None = None,
    ) -> IngestResult:
        started = time.perf_counter()
        meta = _check_metadata(metadata)
        if not 1 <= len(content.name) <= 512:
            raise InvalidArgument("invalid name", violations=[FieldViolation("name", "1 to 512 characters")])
        digest = hashlib.sha256(content.data).hexdigest()
        existing = await self.store.by_name(owner.app_name, scope, content.name)
        if (
            existing is not None
            and not force
            and existing.content_hash == digest
            and existing.chunker == chunker.as_dict()
            and existing.metadata == meta
        ):
            result = IngestResult(existing, UNCHANGED, 0, 0, time.perf_counter() - started)
            if idem is not None:
                await self.store.remember(owner.app_name, owner.user_id, idem, result)
            return result
        progress(Progress(PARSING, len(content.data), len(content.data)))
        # Parsing and tokenizing are CPU work (seconds for a large file): off the event loop.
        extracted = await asyncio.to_thread(parsing.extract, content.name, content.content_type, content.data)
        progress(Progress(CHUNKING, len(content.data), len(content.data)))
        if chunker.strategy == chunking.SEMANTIC:
            pieces = await self._semantic(extracted.text, chunker)
        else:
            page_starts = [start for _, start in extracted.pages]
            pieces = await asyncio.to_thread(chunking.split_pages, extracted.text, page_starts, chunker)
        if not pieces:
            raise InvalidArgument(
                f"{content.name!r} has no text to index",
                reason="UNSUPPORTED_CONTENT_TYPE",
                metadata={"name": content.name},
            )
        if len(pieces) > self.settings.max_chunks_per_source:
            raise ResourceExhausted(
                f"{content.name!r} makes {len(pieces)} chunks; at most {self.settings.max_chunks_per_source}",
                reason="CHUNK_QUOTA",
            )
        total = len(pieces)
        progress(Progress(CHUNKING, len(content.data), len(content.data), total, 0, total))
        vectors: list[list[float]] = []
        for start in range(0, total, EMBED_BATCH):
            vectors.extend(await self.embedder.embed([p.text for p in pieces[start : start + EMBED_BATCH]]))
            progress(Progress(EMBEDDING, len(content.data), len(content.data), total, len(vectors), total))
        now = now_us()
        record = SourceRecord(
            id="ks-" + uuid.uuid4().hex,
            app_name=owner.app_name,
            scope=scope,
            name=content.name,
            kind=content.kind,
            user_id=owner.user_id,
            session_id=owner.session_id,
            uri=content.uri,
            content_type=content.content_type,
            title=extracted.title,
            content_hash=digest,
            size_bytes=len(content.data),
            chunk_count=total,
            chunker=dict(chunker.as_dict()),
            metadata=meta,
            version=1,
            create_us=now,
            update_us=now,
        )
        chunks = [
            ChunkRecord(
                id="kc-" + uuid.uuid4().hex,
                source_id=record.id,
                version=1,
                app_name=owner.app_name,
                chunk_index=n,
                text=piece.text,
                page=extracted.page_at(piece.start),
                start_char=piece.start,
                end_char=piece.end,
                heading_path=list(piece.heading_path),
            )
            for n, piece in enumerate(pieces)
        ]
        progress(Progress(STORING, len(content.data), len(content.data), total, total, total))

        answered: list[tuple[Replaced, IngestResult]] = []

        def result_of(replaced: Replaced) -> IngestResult:
            # Made once per write (inside the transaction when a key is recorded): the reply and what
            # a repeat of the key replays are the same message, duration included.
            if answered and answered[0][0] is replaced:
                return answered[0][1]
            elapsed = time.perf_counter() - started
            if replaced.unchanged:
                result = IngestResult(replaced.source, UNCHANGED, 0, 0, elapsed)
            else:
                outcome = CREATED if replaced.created else UPDATED
                result = IngestResult(replaced.source, outcome, total, replaced.chunks_removed, elapsed)
            answered[:] = [(replaced, result)]
            return result

        replaced = await self.store.put(record, chunks, force, _then(idem, result_of), owner.user_id)
        if not replaced.unchanged:
            await self.drain_outbox({c.id: v for c, v in zip(chunks, vectors, strict=True)})
        return result_of(replaced)

    async def _semantic(self, text: str, chunker: chunking.ChunkerConfig) -> list[chunking.Chunk]:
        sentences = await asyncio.to_thread(chunking.sentences, text)
        if len(sentences) > self.settings.max_chunks_per_source * 4:
            raise ResourceExhausted(
                f"too many sentences for the semantic chunker ({len(sentences)})", reason="CHUNK_QUOTA"
            )
        vectors: list[list[float]] = []
        for start in range(0, len(sentences), EMBED_BATCH):
            batch = sentences[start : start + EMBED_BATCH]
            vectors.extend(await self.embedder.embed([text[s:e] for s, e in batch]))
        return await asyncio.to_thread(chunking.semantic, text, sentences, vectors, chunker)

    # -- sources --------------------------------------------------------------------------------------

    async def get(self, owner: Owner, source_id: str, scope: Scope, name: str) -> SourceRecord:
        if source_id:
            record = await self.store.by_id(owner.app_name, source_id, self._all_visible(owner, scope))
        else:
            record = await self.store.by_name(owner.app_name, scope, self._check_name(name))
        if record is None:
            raise NotFound(
                f"knowledge source {source_id or name!r} not found",
                reason="KNOWLEDGE_SOURCE_NOT_FOUND",
                metadata={"source": source_id or name},
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
            _then(idem, lambda n: (n is not None, n or 0)),
            owner.user_id,
        )
        await self.drain_outbox()
        if removed is None:
            if allow_missing:
                return False, 0
            raise NotFound(f"knowledge source {record.id!r} not found", reason="KNOWLEDGE_SOURCE_NOT_FOUND")
        return True, removed

    async def clear(
        self, owner: Owner, scope: Scope, idem: Idempotency[tuple[int, int]] | None = None
    ) -> tuple[int, int]:
        """(sources, chunks) removed. With ``idem``, a repeat of the key gets the first answer."""
        await self.replay(owner, idem)
        result = await self.store.clear(owner.app_name, scope, idem, owner.user_id)
        await self.drain_outbox()
        return result

    # -- search ---------------------------------------------------------------------------------------

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
    ) -> list[Hit]:
        if not query.strip():
            raise InvalidArgument("empty query", violations=[FieldViolation("query", "must not be empty")])
        if limit < 1 or limit > self.settings.max_limit:
            raise InvalidArgument(
                "invalid limit",
                violations=[FieldViolation("limit", f"must be between 1 and {self.settings.max_limit}")],
            )
        wanted = _check_filter(metadata_filter)
        searched = list(scopes) or default_scopes(owner)
        k = max(limit * 4, 40)

        async def dense_ranking() -> list[tuple[str, float]]:
            vector = await self.embedder.embed_one(query)
            return await self._dense(owner.app_name, searched, vector, k)

        # The lexical search does not need the query's vector: it runs while the model embeds it.
        dense, lexical = await asyncio.gather(
            dense_ranking(), self.store.lexical(owner.app_name, searched, query, k)
        )
        fused = rrf_normalized(
            [[i for i, _ in dense], [i for i, _ in lexical]], weights=[1.0, self.settings.weight_lexical_rank]
        )
        if not fused:
            return []
        semantic = dict(dense)
        top_lexical = max((score for _, score in lexical), default=0.0) or 1.0
        lexical_norm = {i: score / top_lexical for i, score in lexical}
        rows = await self.store.current_chunks(owner.app_name, searched, list(fused))
        ids, names = set(source_ids), set(source_names)
        hits: list[Hit] = []
        for chunk_id, score in fused.items():
            found = rows.get(chunk_id)
            if found is None:
                continue  # a vector the outbox has not removed yet, or another version
            chunk, source = found
            if (ids or names) and source.id not in ids and source.name not in names:
                continue
            if any(source.metadata.get(key) != value for key, value in wanted.items()):
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
        if min_score is not None:
            hits = [h for h in hits if h.score >= min_score]
        return hits[:limit]

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

    # -- the vector index -----------------------------------------------------------------------------

    async def drain_outbox(self, vectors: dict[str, list[float]] | None = None) -> int:
        """Apply pending outbox entries to the vector index (idempotent upserts and deletes by id; the
        rows decide: a chunk that is gone is deleted). ``vectors`` are embeddings already computed."""
        vectors = vectors or {}
        applied = 0
        async with self._drain_lock:
            while True:
                pending = await self.store.pending()
                if not pending:
                    return applied
                rows = await self.store.chunks_for_index([entry.chunk_id for entry in pending])
                upserts: dict[str, dict[str, tuple[ChunkRecord, Scope]]] = defaultdict(dict)
                deletes: dict[str, set[str]] = defaultdict(set)
                for entry in pending:
                    found = rows.get(entry.chunk_id)
                    if found is None:
                        # An entry from before partitions: its vector is in the app's old collection.
                        deletes[entry.vector_collection or collection(entry.app_name)].add(entry.chunk_id)
                    else:
                        upserts[vector_collection(entry.app_name, found[1])][entry.chunk_id] = found
                for coll, records in upserts.items():
                    todo = [i for i in records if i not in vectors]
                    fresh = await self.embedder.embed([records[i][0].text for i in todo]) if todo else []
                    computed = dict(zip(todo, fresh, strict=True))
                    ids = list(records)
                    await self.index.upsert(
                        coll,
                        ids,
                        [computed[i] if i in computed else vectors[i] for i in ids],
                        [{"bucket": records[i][1].bucket, "source_id": records[i][0].source_id} for i in ids],
                    )
                for coll, gone in deletes.items():
                    await self.index.delete(coll, sorted(gone))
                await self.store.done([entry.id for entry in pending])
                applied += len(pending)

    async def reindex(self, app_name: str | None) -> tuple[int, int]:
        """Rebuild the vector index from the chunk rows (the source of truth): the app's collection
        (every app's when None) is dropped, then each current chunk embedded again. Returns (rows
        scanned, vectors written). A write meanwhile adds its own vectors (the outbox); a vector
        written for a chunk deleted meanwhile is never returned (rows decide what a search sees)."""
        await self.drain_outbox()
        apps = [app_name] if app_name is not None else await self.store.apps()
        # Every app's partitions start with the encoded "knowledge:" (see vector_index.partition).
        prefix = partition_prefix(collection(app_name)) if app_name is not None else partition(collection(""))
        for coll in await self.index.collections(prefix):
            await self.index.drop(coll)
        for app in apps:
            await self.index.drop(collection(app))  # a collection from before partitions
        scanned = written = 0
        after = 0
        while True:
            rows = await self.store.chunks_after(app_name, after, REINDEX_BATCH)
            if not rows:
                return scanned, written
            after = rows[-1][0]
            vectors = await self.embedder.embed([chunk.text for _, chunk, _ in rows])
            by_collection: dict[str, list[int]] = defaultdict(list)
            for n, (_, chunk, scope) in enumerate(rows):
                by_collection[vector_collection(chunk.app_name, scope)].append(n)
            for coll, positions in by_collection.items():
                await self.index.upsert(
                    coll,
                    [rows[n][1].id for n in positions],
                    [vectors[n] for n in positions],
                    [{"bucket": rows[n][2].bucket, "source_id": rows[n][1].source_id} for n in positions],
                )
                written += len(positions)
            scanned += len(rows)

    async def migrate_vectors(self, page: int = 1000) -> int:
        """Move the vectors of each app's single collection of old (before partitions, filtered by
        bucket) into the per-scope partitions, then drop it. Vectors are copied, not re-embedded; those
        whose row is gone are left behind. Safe to repeat after a crash (upserts by id; the old
        collection is dropped last). Returns the vectors moved."""
        moved = 0
        for app_name in await self.store.apps():
            legacy = collection(app_name)
            if not await self.index.exists(legacy):
                continue
            log.warning("moving knowledge vectors into per-scope partitions", extra={"app_name": app_name})
            offset = 0
            while True:
                entries = await self.index.entries(legacy, offset, page)
                if not entries:
                    break
                offset += len(entries)
                rows = await self.store.chunks_for_index([e.id for e in entries])
                by_collection: dict[str, list[tuple[ChunkRecord, Scope, list[float]]]] = defaultdict(list)
                for entry in entries:
                    found = rows.get(entry.id)
                    if found is not None:
                        chunk, scope = found
                        by_collection[vector_collection(app_name, scope)].append((chunk, scope, entry.vector))
                for coll, items in by_collection.items():
                    await self.index.upsert(
                        coll,
                        [c.id for c, _, _ in items],
                        [v for _, _, v in items],
                        [{"bucket": s.bucket, "source_id": c.source_id} for c, s, _ in items],
                    )
                    moved += len(items)
            await self.index.drop(legacy)
            log.warning("moved knowledge vectors", extra={"app_name": app_name, "count": moved})
        return moved

    # -- helpers --------------------------------------------------------------------------------------

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
        return name


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
