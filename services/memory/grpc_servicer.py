"""gRPC adapter of the memory service: converts sessionkit.v1 messages and calls MemoryService."""

from __future__ import annotations

import time
from typing import Any, TypeVar

from google.protobuf import duration_pb2
from google.protobuf.message import Message as ProtoMessage

from sessionkit.errors import FieldViolation, InvalidArgument
from sessionkit.jsonvalues import from_struct, to_struct
from sessionkit.v1 import common_pb2, memory_pb2, memory_pb2_grpc
from sessionkit_server.common.idempotency import idempotent
from sessionkit_server.common.identity import owner_of
from sessionkit_server.common.timestamps import to_proto
from sessionkit_server.memory import tables as t
from sessionkit_server.memory.extraction import Message
from sessionkit_server.memory.records import ChangeRecord, MemoryRecord
from sessionkit_server.memory.service import (
    AddResult,
    ExtractResult,
    Hit,
    MemoryService,
    NewMemory,
    Operation,
)
from sessionkit_server.retrieval.explain import explanation_message

Context = Any
R = TypeVar("R")
M = TypeVar("M", bound=ProtoMessage)
OPERATION_TYPES = {
    "ADD": memory_pb2.MemoryOperation.ADD,
    "UPDATE": memory_pb2.MemoryOperation.UPDATE,
    "DELETE": memory_pb2.MemoryOperation.DELETE,
    "NONE": memory_pb2.MemoryOperation.NONE,
}


def _type(value: int, field: str = "memory_type") -> int | None:
    if value in (t.SHORT, t.LONG):
        return value
    if value == 0:
        return None
    raise InvalidArgument("invalid memory_type", violations=[FieldViolation(field, f"unknown value {value}")])


def memory_message(record: MemoryRecord) -> memory_pb2.Memory:
    message = memory_pb2.Memory(
        id=record.id,
        session=common_pb2.SessionRef(
            app_name=record.app_name, user_id=record.user_id, session_id=record.session_id
        ),
        memory_type=record.memory_type,  # type: ignore[arg-type]
        text=record.text,
        quality_score=record.quality,
        metadata=to_struct(record.metadata),
        create_time=to_proto(record.create_us),
        update_time=to_proto(record.update_us),
        revision=record.revision,
        content_hash=record.content_hash,
    )
    if record.expire_us is not None:
        message.expire_time.CopyFrom(to_proto(record.expire_us))
    return message


def hit_message(hit: Hit) -> memory_pb2.MemoryHit:
    return memory_pb2.MemoryHit(
        memory=memory_message(hit.memory),
        score=hit.score,
        scores=memory_pb2.MemoryScores(
            semantic=hit.semantic, lexical=hit.lexical, quality=hit.quality, recency=hit.recency
        ),
        explanation=None if hit.explanation is None else explanation_message(hit.explanation),
    )


def change_message(change: ChangeRecord) -> memory_pb2.MemoryChange:
    message = memory_pb2.MemoryChange(
        id=change.id,
        memory_id=change.memory_id,
        memory_type=change.memory_type,  # type: ignore[arg-type]
        operation=change.operation,  # type: ignore[arg-type]
        old_text=change.old_text or "",
        new_text=change.new_text or "",
        actor=change.actor,
        session_id=change.session_id,
        time=to_proto(change.time_us),
        revision=change.revision,
    )
    if change.old_metadata is not None:
        message.old_metadata.CopyFrom(to_struct(change.old_metadata))
    if change.new_metadata is not None:
        message.new_metadata.CopyFrom(to_struct(change.new_metadata))
    if change.old_quality is not None:
        message.old_quality_score = change.old_quality
    if change.new_quality is not None:
        message.new_quality_score = change.new_quality
    return message


def _optional(request: Any, name: str) -> Any:
    return getattr(request, name) if request.HasField(name) else None


def add_response(result: AddResult) -> memory_pb2.AddMemoryResponse:
    return memory_pb2.AddMemoryResponse(
        memory=memory_message(result.memory),
        deduplicated=result.deduplicated,
        merged=result.merged,
        evicted_memory_ids=result.evicted,
    )


def operation_message(operation: Operation) -> memory_pb2.MemoryOperation:
    message = memory_pb2.MemoryOperation(
        type=OPERATION_TYPES[operation.type], old_text=operation.old_text, fact=operation.fact
    )
    if operation.memory is not None:
        message.memory.CopyFrom(memory_message(operation.memory))
    return message


def extract_response(result: ExtractResult) -> memory_pb2.ExtractMemoriesResponse:
    return memory_pb2.ExtractMemoriesResponse(
        operations=[operation_message(o) for o in result.operations], model=result.model
    )


class MemoryServicer(memory_pb2_grpc.MemoryServiceServicer):
    def __init__(self, service: MemoryService) -> None:
        self.service = service

    async def AddMemory(self, request: memory_pb2.AddMemoryRequest, context: Context) -> Any:
        memory_type = _type(request.memory_type) or t.LONG
        owner = owner_of(request.session)
        return await idempotent(
            request.idempotency_key,
            "AddMemory",
            memory_pb2.AddMemoryResponse,
            add_response,
            lambda idem: self.service.add(
                owner,
                request.text,
                memory_type,
                _optional(request, "quality_score"),
                from_struct(request.metadata),
                request.actor or "user",
                request.skip_merge,
                idem,
            ),
        )

    async def AddMemories(self, request: memory_pb2.AddMemoriesRequest, context: Context) -> Any:
        owner = owner_of(request.session)
        items = [
            NewMemory(
                m.text,
                _type(m.memory_type, f"memories[{n}].memory_type") or t.LONG,
                _optional(m, "quality_score"),
                from_struct(m.metadata),
            )
            for n, m in enumerate(request.memories)
        ]
        return await idempotent(
            request.idempotency_key,
            "AddMemories",
            memory_pb2.AddMemoriesResponse,
            lambda results: memory_pb2.AddMemoriesResponse(results=[add_response(r) for r in results]),
            lambda idem: self.service.add_many(
                owner, items, request.actor or "user", request.skip_merge, idem
            ),
        )

    async def GetMemory(self, request: memory_pb2.GetMemoryRequest, context: Context) -> Any:
        record = await self.service.get(owner_of(request.session), request.memory_id)
        return memory_pb2.GetMemoryResponse(memory=memory_message(record))

    async def ListMemories(self, request: memory_pb2.ListMemoriesRequest, context: Context) -> Any:
        records, token = await self.service.list_memories(
            owner_of(request.session),
            _type(request.memory_type),
            request.page_size,
            request.page_token,
            from_struct(request.metadata_filter),
            _optional(request, "min_quality"),
        )
        return memory_pb2.ListMemoriesResponse(
            memories=[memory_message(r) for r in records], next_page_token=token
        )

    async def UpdateMemory(self, request: memory_pb2.UpdateMemoryRequest, context: Context) -> Any:
        owner = owner_of(request.session)
        return await idempotent(
            request.idempotency_key,
            "UpdateMemory",
            memory_pb2.UpdateMemoryResponse,
            lambda record: memory_pb2.UpdateMemoryResponse(memory=memory_message(record)),
            lambda idem: self.service.update(
                owner,
                request.memory_id,
                text=_optional(request, "text"),
                metadata=from_struct(request.metadata) if request.HasField("metadata") else None,
                merge_metadata=request.merge_metadata,
                quality=_optional(request, "quality_score"),
                expected_revision=_optional(request, "expected_revision"),
                actor=request.actor or "user",
                idem=idem,
            ),
        )

    async def DeleteMemory(self, request: memory_pb2.DeleteMemoryRequest, context: Context) -> Any:
        owner = owner_of(request.session)
        return await idempotent(
            request.idempotency_key,
            "DeleteMemory",
            memory_pb2.DeleteMemoryResponse,
            lambda deleted: memory_pb2.DeleteMemoryResponse(deleted=deleted),
            lambda idem: self.service.delete(
                owner,
                request.memory_id,
                request.allow_missing,
                _optional(request, "expected_revision"),
                request.actor or "user",
                idem,
            ),
        )

    async def ClearMemories(self, request: memory_pb2.ClearMemoriesRequest, context: Context) -> Any:
        owner = owner_of(request.session)
        memory_type = _type(request.memory_type)
        metadata_filter = (
            from_struct(request.metadata_filter) if request.HasField("metadata_filter") else None
        )
        return await idempotent(
            request.idempotency_key,
            "ClearMemories",
            memory_pb2.ClearMemoriesResponse,
            lambda count: memory_pb2.ClearMemoriesResponse(deleted_count=count),
            lambda idem: self.service.clear(owner, memory_type, "user", idem, metadata_filter),
        )

    async def ListMemoryChanges(self, request: memory_pb2.ListMemoryChangesRequest, context: Context) -> Any:
        changes, token = await self.service.history(
            owner_of(request.session),
            request.memory_id,
            _type(request.memory_type),
            request.page_size,
            request.page_token,
        )
        return memory_pb2.ListMemoryChangesResponse(
            changes=[change_message(c) for c in changes], next_page_token=token
        )

    async def SearchMemories(self, request: memory_pb2.SearchMemoriesRequest, context: Context) -> Any:
        hits = await self.service.search(
            owner_of(request.session),
            request.query,
            _type(request.memory_type),
            request.limit or 5,
            _optional(request, "min_quality"),
            from_struct(request.metadata_filter),
            _optional(request, "min_score"),
            request.explain,
        )
        return memory_pb2.SearchMemoriesResponse(hits=[hit_message(h) for h in hits])

    async def BuildMemoryContext(
        self, request: memory_pb2.BuildMemoryContextRequest, context: Context
    ) -> Any:
        text, hits = await self.service.context(
            owner_of(request.session),
            request.query,
            request.max_items or 3,
            _type(request.memory_type),
            _optional(request, "min_quality"),
            from_struct(request.metadata_filter),
            request.max_chars,
        )
        return memory_pb2.BuildMemoryContextResponse(context=text, hits=[hit_message(h) for h in hits])

    async def ExtractMemories(self, request: memory_pb2.ExtractMemoriesRequest, context: Context) -> Any:
        owner = owner_of(request.session)
        memory_type = _type(request.memory_type) or t.LONG
        messages = [Message(m.role, m.content, m.name) for m in request.messages]
        return await idempotent(
            request.idempotency_key,
            "ExtractMemories",
            memory_pb2.ExtractMemoriesResponse,
            extract_response,
            lambda idem: self.service.extract(
                owner,
                messages,
                memory_type,
                from_struct(request.metadata),
                request.dry_run,
                request.actor,
                idem,
                quality=request.quality_score if request.HasField("quality_score") else None,
            ),
        )

    async def ReindexMemories(self, request: memory_pb2.ReindexMemoriesRequest, context: Context) -> Any:
        app = None if request.all_users else (request.session.app_name or "default")
        started = time.perf_counter()
        scanned, written = await self.service.reindex(app)
        duration = duration_pb2.Duration()
        duration.FromNanoseconds(int((time.perf_counter() - started) * 1e9))
        return memory_pb2.ReindexMemoriesResponse(
            scanned_count=scanned, indexed_count=written, duration=duration
        )
