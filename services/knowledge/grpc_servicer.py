"""gRPC adapter of the knowledge service: converts sessionkit.v1 messages and calls KnowledgeService.
Ingestion RPCs run the service call as a task and stream its progress callbacks, then the result."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from google.protobuf import duration_pb2

from sessionkit.errors import FieldViolation, InvalidArgument
from sessionkit.jsonvalues import from_struct, to_struct
from sessionkit.v1 import common_pb2, knowledge_pb2, knowledge_pb2_grpc
from sessionkit_server.common.idempotency import Idempotency, Replayed, idempotent
from sessionkit_server.common.identity import Owner, owner_of
from sessionkit_server.common.timestamps import to_proto
from sessionkit_server.knowledge import chunking
from sessionkit_server.knowledge import tables as t
from sessionkit_server.knowledge.records import Scope, SourceRecord
from sessionkit_server.knowledge.service import (
    Hit,
    IngestResult,
    KnowledgeService,
    Progress,
    ProgressFn,
    scope_of,
)
from sessionkit_server.retrieval.explain import explanation_message

Context = Any
#: How long a failed upload waits for the client to finish sending before answering.
DRAIN_SECONDS = 10.0


async def _drain(requests: AsyncIterator[Any]) -> None:
    async for _ in requests:
        pass


def scope_message(scope: Scope) -> knowledge_pb2.KnowledgeScope:
    return knowledge_pb2.KnowledgeScope(
        kind=scope.kind,  # type: ignore[arg-type]
        collection=scope.key if scope.kind == t.COLLECTION else "",
    )


def _scope(owner: Owner, message: knowledge_pb2.KnowledgeScope, field: str = "scope") -> Scope:
    return scope_of(owner, message.kind, message.collection, field)


def _scopes(owner: Owner, messages: Any) -> list[Scope]:
    return [_scope(owner, m, f"scopes[{n}]") for n, m in enumerate(messages)]


def chunker_of(message: knowledge_pb2.KnowledgeChunker) -> chunking.ChunkerConfig:
    return chunking.chunker_config(
        message.strategy,
        message.chunk_size,
        message.chunk_overlap if message.HasField("chunk_overlap") else None,
        message.semantic_threshold if message.HasField("semantic_threshold") else None,
    )


def source_message(record: SourceRecord) -> knowledge_pb2.KnowledgeSource:
    chunker = record.chunker
    threshold = chunker.get("semantic_threshold")
    message = knowledge_pb2.KnowledgeSource(
        id=record.id,
        name=record.name,
        kind=record.kind,  # type: ignore[arg-type]
        scope=scope_message(record.scope),
        session=common_pb2.SessionRef(
            app_name=record.app_name, user_id=record.user_id, session_id=record.session_id
        ),
        uri=record.uri,
        content_type=record.content_type,
        title=record.title,
        content_hash=record.content_hash,
        size_bytes=record.size_bytes,
        chunk_count=record.chunk_count,
        chunker=knowledge_pb2.KnowledgeChunker(
            strategy=int(chunker.get("strategy", 0) or 0),  # type: ignore[arg-type]
            chunk_size=int(chunker.get("chunk_size", 0) or 0),  # type: ignore[arg-type]
            chunk_overlap=int(chunker.get("chunk_overlap", 0) or 0),  # type: ignore[arg-type]
        ),
        metadata=to_struct(record.metadata),
        create_time=to_proto(record.create_us),
        update_time=to_proto(record.update_us),
    )
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        message.chunker.semantic_threshold = float(threshold)
    return message


def result_message(result: IngestResult) -> knowledge_pb2.KnowledgeIngestionResult:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(result.duration_s * 1e9))
    return knowledge_pb2.KnowledgeIngestionResult(
        source=source_message(result.source),
        outcome=result.outcome,  # type: ignore[arg-type]
        chunks_added=result.chunks_added,
        chunks_removed=result.chunks_removed,
        duration=duration,
    )


def progress_message(p: Progress) -> knowledge_pb2.KnowledgeIngestionProgress:
    return knowledge_pb2.KnowledgeIngestionProgress(
        stage=p.stage,  # type: ignore[arg-type]
        bytes_read=p.bytes_read,
        bytes_total=p.bytes_total,
        chunks_created=p.chunks_created,
        chunks_embedded=p.chunks_embedded,
        chunks_total=p.chunks_total,
    )


def hit_message(hit: Hit) -> knowledge_pb2.KnowledgeHit:
    return knowledge_pb2.KnowledgeHit(
        chunk_id=hit.chunk.id,
        text=hit.chunk.text,
        source_id=hit.source.id,
        source_name=hit.source.name,
        source_kind=hit.source.kind,  # type: ignore[arg-type]
        scope=scope_message(hit.source.scope),
        position=knowledge_pb2.KnowledgeChunkPosition(
            chunk_index=hit.chunk.chunk_index,
            page=hit.chunk.page,
            start_char=hit.chunk.start_char,
            end_char=hit.chunk.end_char,
        ),
        heading_path=hit.chunk.heading_path,
        score=hit.score,
        scores=knowledge_pb2.KnowledgeScores(semantic=hit.semantic, lexical=hit.lexical),
        metadata=to_struct(hit.source.metadata),
        explanation=None if hit.explanation is None else explanation_message(hit.explanation),
    )


def ingestion_key(key: str, method: str) -> Idempotency[IngestResult] | None:
    """The idempotency of an ingestion RPC: its stored response is the KnowledgeIngestionResult."""
    if not key:
        return None
    return Idempotency(key, method, lambda result: result_message(result).SerializeToString())


async def with_progress(
    report: bool, run: Callable[[ProgressFn], Awaitable[IngestResult]]
) -> AsyncIterator[knowledge_pb2.KnowledgeIngestionProgress | knowledge_pb2.KnowledgeIngestionResult]:
    """Run an ingestion, yielding its progress (when ``report``) as it happens, then its result. A
    repeated idempotency key yields the first call's result only."""
    queue: asyncio.Queue[Progress | None] = asyncio.Queue()

    def on_progress(p: Progress) -> None:
        if report:
            queue.put_nowait(p)

    task = asyncio.ensure_future(run(on_progress))
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        last: tuple[int, ...] | None = None
        while (p := await queue.get()) is not None:
            key = (p.stage, p.bytes_read, p.chunks_created, p.chunks_embedded, p.chunks_total)
            if key != last:
                last = key
                yield progress_message(p)
        try:
            result = await task
        except Replayed as replay:
            yield knowledge_pb2.KnowledgeIngestionResult.FromString(replay.response)
        else:
            yield result_message(result)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class KnowledgeServicer(knowledge_pb2_grpc.KnowledgeServiceServicer):
    def __init__(self, service: KnowledgeService) -> None:
        self.service = service

    async def AddKnowledgeSource(
        self, request: knowledge_pb2.AddKnowledgeSourceRequest, context: Context
    ) -> AsyncIterator[knowledge_pb2.AddKnowledgeSourceResponse]:
        owner = owner_of(request.session)
        scope = _scope(owner, request.scope)
        chunker = chunker_of(request.chunker)
        metadata = from_struct(request.metadata)
        which = request.WhichOneof("content")
        if which is None:
            raise InvalidArgument(
                "a source needs text or a url", violations=[FieldViolation("content", "set text or url")]
            )
        idem = ingestion_key(request.idempotency_key, "AddKnowledgeSource")

        def run(progress: ProgressFn) -> Awaitable[IngestResult]:
            if which == "text":
                return self.service.add_text(
                    owner, scope, request.text, request.name, request.content_type, chunker, metadata,
                    request.force, progress, idem,
                )  # fmt: skip
            return self.service.add_url(
                owner, scope, request.url, request.name, request.content_type, chunker, metadata,
                request.force, progress, idem,
            )  # fmt: skip

        async for message in with_progress(request.report_progress, run):
            if isinstance(message, knowledge_pb2.KnowledgeIngestionProgress):
                yield knowledge_pb2.AddKnowledgeSourceResponse(progress=message)
            else:
                yield knowledge_pb2.AddKnowledgeSourceResponse(result=message)

    async def UploadKnowledgeFile(
        self, request_iterator: AsyncIterator[knowledge_pb2.UploadKnowledgeFileRequest], context: Context
    ) -> AsyncIterator[knowledge_pb2.UploadKnowledgeFileResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument(
                "the first message of an upload must be its header",
                violations=[FieldViolation("header", "send the header first")],
            )
        header = first.header
        owner = owner_of(header.session)
        scope = _scope(owner, header.scope)
        chunker = chunker_of(header.chunker)
        metadata = from_struct(header.metadata)

        async def parts() -> AsyncIterator[bytes]:
            async for message in request_iterator:
                if message.WhichOneof("part") != "chunk":
                    raise InvalidArgument(
                        "a second header in an upload",
                        violations=[FieldViolation("header", "only the first message is a header")],
                    )
                yield message.chunk

        idem = ingestion_key(header.idempotency_key, "UploadKnowledgeFile")

        def run(progress: ProgressFn) -> Awaitable[IngestResult]:
            # A repeated key is answered before any byte is read (the service checks it first).
            return self.service.add_file(
                owner, scope, header.file_name, header.name, header.content_type, header.size_bytes,
                header.sha256, parts(), chunker, metadata, header.force, progress, idem,
            )  # fmt: skip

        try:
            async for message in with_progress(header.report_progress, run):
                if isinstance(message, knowledge_pb2.KnowledgeIngestionProgress):
                    yield knowledge_pb2.UploadKnowledgeFileResponse(progress=message)
                else:
                    yield knowledge_pb2.UploadKnowledgeFileResponse(result=message)
        except Exception:
            # Ending the call while the client is still sending resets the stream, and the client
            # sees INTERNAL instead of our status: let it finish sending (discarded, bounded) first.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(_drain(request_iterator), DRAIN_SECONDS)
            raise

    async def GetKnowledgeSource(
        self, request: knowledge_pb2.GetKnowledgeSourceRequest, context: Context
    ) -> Any:
        owner = owner_of(request.session)
        record = await self.service.get(owner, request.source_id, _scope(owner, request.scope), request.name)
        return knowledge_pb2.GetKnowledgeSourceResponse(source=source_message(record))

    async def ListKnowledgeSources(
        self, request: knowledge_pb2.ListKnowledgeSourcesRequest, context: Context
    ) -> Any:
        if request.HasField("metadata_filter") and request.metadata_filter.fields:
            raise InvalidArgument(
                "listing by metadata_filter is not supported yet",
                violations=[FieldViolation("metadata_filter", "not supported yet")],
            )
        owner = owner_of(request.session)
        records, token = await self.service.list_sources(
            owner, _scopes(owner, request.scopes), request.kind, request.page_size, request.page_token
        )
        return knowledge_pb2.ListKnowledgeSourcesResponse(
            sources=[source_message(r) for r in records], next_page_token=token
        )

    async def DeleteKnowledgeSource(
        self, request: knowledge_pb2.DeleteKnowledgeSourceRequest, context: Context
    ) -> Any:
        owner = owner_of(request.session)
        scope = _scope(owner, request.scope)

        def respond(result: tuple[bool, int]) -> knowledge_pb2.DeleteKnowledgeSourceResponse:
            return knowledge_pb2.DeleteKnowledgeSourceResponse(
                deleted=result[0], deleted_chunk_count=result[1]
            )

        return await idempotent(
            request.idempotency_key,
            "DeleteKnowledgeSource",
            knowledge_pb2.DeleteKnowledgeSourceResponse,
            respond,
            lambda idem: self.service.delete(
                owner, request.source_id, scope, request.name, request.allow_missing, idem
            ),
        )

    async def ClearKnowledge(self, request: knowledge_pb2.ClearKnowledgeRequest, context: Context) -> Any:
        owner = owner_of(request.session)
        scope = _scope(owner, request.scope)

        def respond(result: tuple[int, int]) -> knowledge_pb2.ClearKnowledgeResponse:
            return knowledge_pb2.ClearKnowledgeResponse(
                deleted_source_count=result[0], deleted_chunk_count=result[1]
            )

        return await idempotent(
            request.idempotency_key,
            "ClearKnowledge",
            knowledge_pb2.ClearKnowledgeResponse,
            respond,
            lambda idem: self.service.clear(owner, scope, idem),
        )

    async def SearchKnowledge(self, request: knowledge_pb2.SearchKnowledgeRequest, context: Context) -> Any:
        owner = owner_of(request.session)
        hits = await self.service.search(
            owner,
            request.query,
            request.limit or 5,
            _scopes(owner, request.scopes),
            list(request.source_ids),
            list(request.source_names),
            from_struct(request.metadata_filter),
            request.min_score if request.HasField("min_score") else None,
            request.explain,
        )
        return knowledge_pb2.SearchKnowledgeResponse(hits=[hit_message(h) for h in hits])

    async def ReindexKnowledge(self, request: knowledge_pb2.ReindexKnowledgeRequest, context: Context) -> Any:
        app = None if request.all_users else (request.session.app_name or "default")
        started = time.perf_counter()
        scanned, written = await self.service.reindex(app)
        duration = duration_pb2.Duration()
        duration.FromNanoseconds(int((time.perf_counter() - started) * 1e9))
        return knowledge_pb2.ReindexKnowledgeResponse(
            scanned_count=scanned, indexed_count=written, duration=duration
        )
