"""REST over the memory service: add (one, or a batch), list, search, context, update, delete and
history of memories; each route converts the HTTP request to one SDK client call and its result to the
response model."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from sessionkit import reasons
from sessionkit.errors import FieldViolation
from sessionkit.jsonvalues import check_json, to_struct
from sessionkit.memory_client import Stub as MemoryStub
from sessionkit.memory_client import hit_dict
from sessionkit.memory_client import memory_type as memory_type_message
from sessionkit.v1 import memory_pb2
from sessionkit_server.gateway.deps import (
    CallerDep,
    IdempotencyKey,
    SessionIdPath,
    UserQuery,
)
from sessionkit_server.gateway.models import (
    AddedMemories,
    AddedMemory,
    Deleted,
    DeletedCount,
    MemoriesIn,
    MemoryContext,
    MemoryContextIn,
    MemoryFilter,
    MemoryHistory,
    MemoryHits,
    MemoryIn,
    MemoryList,
    MemoryOut,
    MemorySearch,
    MemoryUpdate,
)

MemoryIdPath = Annotated[str, Path(min_length=1, max_length=128, description="Memory id (m-...)")]
MetadataFilterQuery = Annotated[
    str | None,
    Query(
        max_length=2048,
        description='Only memories whose metadata has these values: a JSON object, e.g. {"k": "v"}',
    ),
]


def add(router: APIRouter) -> None:
    # -- memories ----------------------------------------------------------------------------------

    @router.post(
        "/v1/sessions/{session_id}/memories", response_model=AddedMemory, status_code=201, tags=["memories"]
    )
    async def add_memory(
        session_id: SessionIdPath,
        body: MemoryIn,
        caller: CallerDep,
        user_id: UserQuery = "default",
        idempotency_key: IdempotencyKey = None,
    ) -> AddedMemory:
        """AddMemory (short: this session's; long: the user's)."""
        added = await caller.clients.memory.add(
            caller.ref(user_id, session_id),
            body.text,
            body.memory_type,
            body.quality_score,
            body.metadata,
            idempotency_key,
        )
        return AddedMemory(**added)

    @router.post(
        "/v1/sessions/{session_id}/memories/batch",
        response_model=AddedMemories,
        status_code=201,
        tags=["memories"],
    )
    async def add_memories(
        session_id: SessionIdPath,
        body: MemoriesIn,
        caller: CallerDep,
        user_id: UserQuery = "default",
        idempotency_key: IdempotencyKey = None,
    ) -> AddedMemories:
        """AddMemories: many memories in one transaction, each with its own memory_type,
        quality_score and metadata; one result per item, in order."""
        added = await caller.clients.memory.add_many(
            caller.ref(user_id, session_id),
            [m.model_dump(exclude_none=True) for m in body.memories],
            body.memory_type,
            body.skip_merge,
            idempotency_key,
        )
        return AddedMemories(results=[AddedMemory(**m) for m in added])

    @router.get("/v1/sessions/{session_id}/memories", response_model=MemoryList, tags=["memories"])
    async def list_memories(
        session_id: SessionIdPath,
        caller: CallerDep,
        user_id: UserQuery = "default",
        memory_type: MemoryFilter = "all",
        metadata_filter: MetadataFilterQuery = None,
    ) -> MemoryList:
        """ListMemories (every page)."""
        memories = await caller.clients.memory.list_all(
            caller.ref(user_id, session_id),
            memory_type,
            _json_object(metadata_filter, "query.metadata_filter"),
        )
        return MemoryList(memories=[MemoryOut(**m) for m in memories])

    @router.post("/v1/sessions/{session_id}/memories/search", response_model=MemoryHits, tags=["memories"])
    async def search_memories(
        session_id: SessionIdPath, body: MemorySearch, caller: CallerDep, user_id: UserQuery = "default"
    ) -> MemoryHits:
        """SearchMemories (hybrid: semantic and lexical)."""
        hits = await caller.clients.memory.search(
            caller.ref(user_id, session_id),
            body.query,
            body.memory_type,
            body.limit,
            body.min_quality,
            body.metadata_filter,
            body.explain,
        )
        return MemoryHits.model_validate({"hits": hits})

    @router.post(
        "/v1/sessions/{session_id}/memories/context", response_model=MemoryContext, tags=["memories"]
    )
    async def memory_context(
        session_id: SessionIdPath, body: MemoryContextIn, caller: CallerDep, user_id: UserQuery = "default"
    ) -> MemoryContext:
        """BuildMemoryContext: the relevant memories as one text block for a prompt, and the hits used."""
        request = memory_pb2.BuildMemoryContextRequest(
            session=caller.ref(user_id, session_id).message,
            query=body.query,
            max_items=body.max_items,
            memory_type=memory_type_message(body.memory_type),  # type: ignore[arg-type]
            min_quality=body.min_quality,
            max_chars=body.max_chars,
        )
        if body.metadata_filter:
            request.metadata_filter.CopyFrom(to_struct(check_json(body.metadata_filter, "metadata_filter")))  # type: ignore[arg-type]
        reply = await caller.clients.transport.unary("memory", MemoryStub, "BuildMemoryContext", request)
        return MemoryContext.model_validate(
            {"context": reply.context, "hits": [hit_dict(h) for h in reply.hits]}
        )

    @router.delete("/v1/sessions/{session_id}/memories", response_model=DeletedCount, tags=["memories"])
    async def clear_memories(
        session_id: SessionIdPath,
        caller: CallerDep,
        user_id: UserQuery = "default",
        memory_type: MemoryFilter = "all",
        metadata_filter: MetadataFilterQuery = None,
        idempotency_key: IdempotencyKey = None,
    ) -> DeletedCount:
        """ClearMemories (only those whose metadata has these values, with metadata_filter)."""
        count = await caller.clients.memory.clear(
            caller.ref(user_id, session_id),
            memory_type,
            idempotency_key,
            _json_object(metadata_filter, "query.metadata_filter"),
        )
        return DeletedCount(deleted_count=count)

    @router.get("/v1/sessions/{session_id}/memories/{memory_id}", response_model=MemoryOut, tags=["memories"])
    async def get_memory(
        session_id: SessionIdPath, memory_id: MemoryIdPath, caller: CallerDep, user_id: UserQuery = "default"
    ) -> MemoryOut:
        """GetMemory."""
        return MemoryOut(**await caller.clients.memory.get(caller.ref(user_id, session_id), memory_id))

    @router.patch(
        "/v1/sessions/{session_id}/memories/{memory_id}", response_model=MemoryOut, tags=["memories"]
    )
    async def update_memory(
        session_id: SessionIdPath,
        memory_id: MemoryIdPath,
        body: MemoryUpdate,
        caller: CallerDep,
        user_id: UserQuery = "default",
        idempotency_key: IdempotencyKey = None,
    ) -> MemoryOut:
        """UpdateMemory (text, metadata, quality_score; omitted fields are kept)."""
        updated = await caller.clients.memory.update(
            caller.ref(user_id, session_id),
            memory_id,
            body.text,
            body.metadata,
            body.quality_score,
            idempotency_key,
        )
        return MemoryOut(**updated)

    @router.delete(
        "/v1/sessions/{session_id}/memories/{memory_id}", response_model=Deleted, tags=["memories"]
    )
    async def delete_memory(
        session_id: SessionIdPath,
        memory_id: MemoryIdPath,
        caller: CallerDep,
        user_id: UserQuery = "default",
        idempotency_key: IdempotencyKey = None,
    ) -> Deleted:
        """DeleteMemory."""
        deleted = await caller.clients.memory.delete(
            caller.ref(user_id, session_id), memory_id, idempotency_key
        )
        return Deleted(deleted=deleted)

    @router.get(
        "/v1/sessions/{session_id}/memories/{memory_id}/history",
        response_model=MemoryHistory,
        tags=["memories"],
    )
    async def memory_history(
        session_id: SessionIdPath, memory_id: MemoryIdPath, caller: CallerDep, user_id: UserQuery = "default"
    ) -> MemoryHistory:
        """ListMemoryChanges of one memory (ADD, UPDATE, MERGE, DELETE), oldest first."""
        changes = await caller.clients.memory.history(caller.ref(user_id, session_id), memory_id)
        return MemoryHistory.model_validate({"changes": changes})


def _json_object(text: str | None, field: str) -> dict[str, Any] | None:
    """A query parameter holding a JSON object (None when absent or empty)."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise reasons.INVALID_REQUEST.error(
            detail=f"{field} must be a JSON object",
            violations=[FieldViolation(field, 'a JSON object, e.g. {"k": "v"}')],
        )
    return value
