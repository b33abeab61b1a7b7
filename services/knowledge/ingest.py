"""Ingestion: receive (upload), fetch (URL) or take text, parse, chunk, embed and store a source, with
content-hash idempotency (unchanged content is not ingested again) and atomic replacement of a
source's chunks."""

from __future__ import annotations

import asyncio
import hashlib
import posixpath
import time
import uuid
from collections.abc import AsyncIterator

from sessionkit import reasons
from sessionkit.errors import FieldViolation, InvalidArgument, ResourceExhausted
from sessionkit_server.common import checks
from sessionkit_server.common.idempotency import Idempotency, then
from sessionkit_server.common.identity import Owner
from sessionkit_server.common.timestamps import now_us
from sessionkit_server.knowledge import chunking, parsing
from sessionkit_server.knowledge import tables as t
from sessionkit_server.knowledge.base import (
    CHUNKING,
    CREATED,
    EMBED_BATCH,
    EMBEDDING,
    FETCHING,
    PARSING,
    RECEIVING,
    STORING,
    UNCHANGED,
    UPDATED,
    Content,
    IngestResult,
    JsonObject,
    KnowledgeBase,
    Progress,
    ProgressFn,
    _check_metadata,
)
from sessionkit_server.knowledge.fetch import check_url, fetch
from sessionkit_server.knowledge.records import ChunkRecord, Replaced, Scope, SourceRecord
from sessionkit_server.knowledge.store import index_row


class KnowledgeIngestion(KnowledgeBase):
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
            raise reasons.SOURCE_TOO_LARGE.error(
                what="the text",
                size=len(data),
                limit=self.settings.max_text_bytes,
                metadata={"limit_bytes": str(self.settings.max_text_bytes)},
            )
        digest = hashlib.sha256(data).hexdigest()
        name = name or f"text-{digest[:12]}"
        content_type = (content_type or "text/plain").split(";")[0].strip().lower()
        if content_type not in ("text/plain", "text/markdown"):
            raise reasons.UNSUPPORTED_CONTENT_TYPE.error(
                name=name,
                problem=f"content_type {content_type!r} is not text/plain or text/markdown",
                violations=[FieldViolation("content_type", "text/plain or text/markdown")],
            )
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
        return reasons.SOURCE_TOO_LARGE.error(
            what=repr(name), size=size, limit=limit, metadata={"name": name, "limit_bytes": str(limit)}
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
        checks.text(content.name, "name")
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
            pieces = await self._semantic(content.name, extracted.text, chunker)
        else:
            page_starts = [start for _, start in extracted.pages]
            pieces = await asyncio.to_thread(chunking.split_pages, extracted.text, page_starts, chunker)
        if not pieces:
            raise reasons.UNSUPPORTED_CONTENT_TYPE.error(
                name=content.name, problem="it has no text to index", metadata={"name": content.name}
            )
        if len(pieces) > self.settings.max_chunks_per_source:
            raise reasons.CHUNK_QUOTA.error(
                name=content.name,
                count=len(pieces),
                what="chunks",
                limit=self.settings.max_chunks_per_source,
            )
        total = len(pieces)
        progress(Progress(CHUNKING, len(content.data), len(content.data), total, 0, total))
        vectors: list[list[float]] = []
        for start in range(0, total, EMBED_BATCH):
            batch = [p.text for p in pieces[start : start + EMBED_BATCH]]
            vectors.extend(await self.chunk_embedder.embed(batch))
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

        replaced = await self.store.put(record, chunks, force, then(idem, result_of), owner.user_id)
        if not replaced.unchanged:
            # The rows and their outbox entries are committed: the vectors go in behind the reply
            # (searches settle them first), and the old version's, if any, are deleted now.
            scope = replaced.source.scope
            self.vectors.write_behind([index_row(c, scope) for c in chunks], vectors)
            if replaced.chunks_removed:
                await self.drain_outbox()
        return result_of(replaced)

    async def _semantic(self, name: str, text: str, chunker: chunking.ChunkerConfig) -> list[chunking.Chunk]:
        sentences = await asyncio.to_thread(chunking.sentences, text)
        if len(sentences) > self.settings.max_chunks_per_source * 4:
            raise reasons.CHUNK_QUOTA.error(
                name=name,
                count=len(sentences),
                what="sentences for the semantic chunker",
                limit=self.settings.max_chunks_per_source * 4,
            )
        vectors: list[list[float]] = []
        for start in range(0, len(sentences), EMBED_BATCH):
            batch = sentences[start : start + EMBED_BATCH]
            vectors.extend(await self.embedder.embed([text[s:e] for s, e in batch]))
        return await asyncio.to_thread(chunking.semantic, text, sentences, vectors, chunker)
