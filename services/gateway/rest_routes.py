"""REST over the state, memory and knowledge services: one route per gRPC method, each converting the
HTTP request to one SDK client call and its result to the response model. No business logic here."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Path, Query, Response, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import Json

from sessionkit import reasons
from sessionkit.errors import FieldViolation, InternalError, InvalidArgument, SessionKitError
from sessionkit.jsonvalues import check_json, to_struct
from sessionkit.knowledge_client import Stub as KnowledgeStub
from sessionkit.knowledge_client import chunker_message, result_dict, scope_message
from sessionkit.memory_client import Stub as MemoryStub
from sessionkit.memory_client import hit_dict
from sessionkit.memory_client import memory_type as memory_type_message
from sessionkit.state_client import SessionInfo, SessionRef, StateChange
from sessionkit.v1 import knowledge_pb2, memory_pb2
from sessionkit_server.gateway.deps import Caller, CallerDep, IdempotencyKey, SessionIdPath, UserQuery
from sessionkit_server.gateway.errors import error_body
from sessionkit_server.gateway.models import (
    INT64_MAX,
    AddedMemory,
    ClearedKnowledge,
    CreatedSession,
    CreateSession,
    Deleted,
    DeletedCount,
    DeletedSource,
    DeletedValue,
    EventIn,
    EventList,
    EventOut,
    Ingestion,
    KnowledgeHits,
    KnowledgeIn,
    KnowledgeSearch,
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
    PatchedValue,
    PatchValue,
    SaveState,
    Scope,
    SessionList,
    SessionOut,
    SetValue,
    SourceList,
    StateChangeOut,
    StateOut,
    StateVersionOut,
    ValueOut,
    Version,
    VersionList,
)

KeyPath = Annotated[
    str,
    Path(min_length=1, max_length=256, description="State key (may contain '/', sent as it is or as %2F)"),
]
MemoryIdPath = Annotated[str, Path(min_length=1, max_length=128, description="Memory id (m-...)")]
ExpectedVersion = Annotated[
    int | None, Query(ge=0, le=INT64_MAX, description="Compare-and-set: 409 when stale")
]
PageSize = Annotated[int, Query(ge=0, le=1000, description="0: the server's default")]
PageToken = Annotated[str, Query(max_length=4096)]
log = logging.getLogger("sessionkit.gateway")

WATCH_DESCRIPTION = (
    "Server-Sent Events: one `event: change` per state change, data "
    '{"version", "operation", "key", "value", "state", "time"} (operation SNAPSHOT first with '
    "since_version=0), for as long as the client stays connected; a failure after the stream started "
    "is one `event: error` with the error body."
)


def _session(info: SessionInfo, caller: Caller) -> SessionOut:
    return SessionOut(
        app=caller.app,
        user_id=info.user_id,
        session_id=info.session_id,
        create_time=info.create_time,
        update_time=info.update_time,
        expire_time=info.expire_time,
        ttl_seconds=info.ttl_seconds,
        version=info.version,
        event_count=info.event_count,
    )


def add(router: APIRouter) -> None:
    # -- sessions ----------------------------------------------------------------------------------

    @router.post(
        "/v1/sessions",
        response_model=CreatedSession,
        status_code=201,
        tags=["sessions"],
        responses={200: {"model": CreatedSession, "description": "The session existed (created: false)"}},
    )
    async def create_session(
        body: CreateSession, caller: CallerDep, response: Response, user_id: UserQuery = "default"
    ) -> CreatedSession:
        """CreateSession (get_if_exists by default: 200 with created=false for an existing session)."""
        info, created = await caller.clients.state.create_session(
            caller.ref(user_id, body.session_id or ""),
            ttl_seconds=body.ttl_seconds,
            initial_state=body.state,
            get_if_exists=body.get_if_exists,
        )
        if not created:
            response.status_code = 200
        return CreatedSession(**_session(info, caller).model_dump(), created=created)

    @router.get("/v1/sessions", response_model=SessionList, tags=["sessions"])
    async def list_sessions(
        caller: CallerDep, user_id: UserQuery = "default", page_size: PageSize = 0, page_token: PageToken = ""
    ) -> SessionList:
        """ListSessions of one user."""
        infos, token = await caller.clients.state.list_sessions(
            caller.app_name, user_id, page_size, page_token
        )
        return SessionList(sessions=[_session(i, caller) for i in infos], next_page_token=token)

    @router.get("/v1/sessions/{session_id}", response_model=SessionOut, tags=["sessions"])
    async def get_session(
        session_id: SessionIdPath, caller: CallerDep, user_id: UserQuery = "default"
    ) -> SessionOut:
        """GetSession."""
        return _session(await caller.clients.state.get_session(caller.ref(user_id, session_id)), caller)

    @router.delete("/v1/sessions/{session_id}", response_model=Deleted, tags=["sessions"])
    async def delete_session(
        session_id: SessionIdPath,
        caller: CallerDep,
        user_id: UserQuery = "default",
        allow_missing: bool = False,
    ) -> Deleted:
        """DeleteSession with its state, events and history."""
        deleted = await caller.clients.state.delete_session(caller.ref(user_id, session_id), allow_missing)
        return Deleted(deleted=deleted)

    # -- state -------------------------------------------------------------------------------------

    @router.get("/v1/sessions/{session_id}/state", response_model=StateOut, tags=["state"])
    async def get_state(
        session_id: SessionIdPath,
        caller: CallerDep,
        user_id: UserQuery = "default",
        keys: Annotated[list[str] | None, Query(description="Only these keys (repeatable)")] = None,
    ) -> StateOut:
        """GetState: the session's keys merged with its user: and app: keys."""
        state, version = await caller.clients.state.get_state(caller.ref(user_id, session_id), keys)
        return StateOut(state=state, version=version)

    @router.put("/v1/sessions/{session_id}/state", response_model=Version, tags=["state"])
    async def save_state(
        session_id: SessionIdPath,
        body: SaveState,
        caller: CallerDep,
        user_id: UserQuery = "default",
        idempotency_key: IdempotencyKey = None,
    ) -> Version:
        """SaveState: replace the session's state."""
        version = await caller.clients.state.save_state(
            caller.ref(user_id, session_id), body.state, body.expected_version, idempotency_key
        )
        return Version(version=version)

    @router.delete("/v1/sessions/{session_id}/state", response_model=Version, tags=["state"])
    async def clear_state(
        session_id: SessionIdPath,
        caller: CallerDep,
        user_id: UserQuery = "default",
        expected_version: ExpectedVersion = None,
        include_user_scope: bool = False,
        include_app_scope: bool = False,
        idempotency_key: IdempotencyKey = None,
    ) -> Version:
        """ClearState."""
        version = await caller.clients.state.clear_state(
            caller.ref(user_id, session_id),
            expected_version,
            include_user_scope=include_user_scope,
            include_app_scope=include_app_scope,
            idempotency_key=idempotency_key,
        )
        return Version(version=version)

    @router.get("/v1/sessions/{session_id}/state/{key:path}", response_model=ValueOut, tags=["state"])
    async def get_value(
        session_id: SessionIdPath, key: KeyPath, caller: CallerDep, user_id: UserQuery = "default"
    ) -> ValueOut:
        """GetState of one key; 404 (STATE_KEY_NOT_FOUND) when it is not set."""
        state, version = await caller.clients.state.get_state(caller.ref(user_id, session_id), [key])
        if key not in state:
            raise reasons.STATE_KEY_NOT_FOUND.error(key=key, session_id=session_id)
        return ValueOut(key=key, value=state[key], version=version)

    @router.put("/v1/sessions/{session_id}/state/{key:path}", response_model=Version, tags=["state"])
    async def set_value(
        session_id: SessionIdPath,
        key: KeyPath,
        body: SetValue,
        caller: CallerDep,
        user_id: UserQuery = "default",
        idempotency_key: IdempotencyKey = None,
    ) -> Version:
        """SetStateValue."""
        version = await caller.clients.state.set_value(
            caller.ref(user_id, session_id), key, body.value, body.expected_version, idempotency_key
        )
        return Version(version=version)

    @router.patch("/v1/sessions/{session_id}/state/{key:path}", response_model=PatchedValue, tags=["state"])
    async def patch_value(
        session_id: SessionIdPath,
        key: KeyPath,
        body: PatchValue,
        caller: CallerDep,
        user_id: UserQuery = "default",
        idempotency_key: IdempotencyKey = None,
    ) -> PatchedValue:
        """IncrementState ({"increment": n}) or AppendState ({"append": [values]})."""
        ref = caller.ref(user_id, session_id)
        if (body.increment is None) == (body.append is None):
            raise InvalidArgument(
                "give exactly one of increment and append",
                violations=[FieldViolation("body", "exactly one of increment, append")],
            )
        if body.increment is not None:
            version, value = await caller.clients.state.increment(
                ref, key, body.increment, body.expected_version, idempotency_key
            )
            return PatchedValue(version=version, value=value)
        assert body.append is not None
        version, length = await caller.clients.state.append(
            ref, key, body.append, body.expected_version, idempotency_key
        )
        return PatchedValue(version=version, length=length)

    @router.delete("/v1/sessions/{session_id}/state/{key:path}", response_model=DeletedValue, tags=["state"])
    async def delete_value(
        session_id: SessionIdPath,
        key: KeyPath,
        caller: CallerDep,
        user_id: UserQuery = "default",
        expected_version: ExpectedVersion = None,
        idempotency_key: IdempotencyKey = None,
    ) -> DeletedValue:
        """DeleteStateValue."""
        version, existed = await caller.clients.state.delete_value(
            caller.ref(user_id, session_id), key, expected_version, idempotency_key
        )
        return DeletedValue(version=version, existed=existed)

    # Versions and the watch stream are not under /state/: every path below /state/ is a key.

    @router.get("/v1/sessions/{session_id}/versions", response_model=VersionList, tags=["state"])
    async def list_versions(
        session_id: SessionIdPath,
        caller: CallerDep,
        user_id: UserQuery = "default",
        page_size: PageSize = 0,
        page_token: PageToken = "",
    ) -> VersionList:
        """ListStateVersions: earlier versions of the session's own keys, newest first."""
        versions, token = await caller.clients.state.list_versions(
            caller.ref(user_id, session_id), page_size, page_token
        )
        return VersionList(versions=[StateVersionOut(**vars(v)) for v in versions], next_page_token=token)

    @router.post(
        "/v1/sessions/{session_id}/versions/{version}/restore", response_model=Version, tags=["state"]
    )
    async def restore_version(
        session_id: SessionIdPath,
        version: Annotated[
            int, Path(ge=1, le=INT64_MAX, description="A retained version (see GET .../versions)")
        ],
        caller: CallerDep,
        user_id: UserQuery = "default",
        expected_version: ExpectedVersion = None,
        idempotency_key: IdempotencyKey = None,
    ) -> Version:
        """RestoreStateVersion: that version's keys become the current state, as a new version
        (404 VERSION_NOT_FOUND when it is no longer retained)."""
        new_version = await caller.clients.state.restore_version(
            caller.ref(user_id, session_id), version, expected_version, idempotency_key
        )
        return Version(version=new_version)

    @router.get(
        "/v1/sessions/{session_id}/watch",
        tags=["state"],
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
                "description": WATCH_DESCRIPTION,
            }
        },
    )
    async def watch_state(
        session_id: SessionIdPath,
        caller: CallerDep,
        user_id: UserQuery = "default",
        since_version: Annotated[
            int, Query(ge=0, le=INT64_MAX, description="0: a SNAPSHOT of the current state first")
        ] = 0,
    ) -> StreamingResponse:
        """WatchState as Server-Sent Events."""
        changes = caller.clients.state.watch(caller.ref(user_id, session_id), since_version)
        try:
            # Read before answering, so a refused watch (no session, no key) is a plain HTTP error.
            first = await anext(changes)
        except BaseException:
            await changes.aclose()  # type: ignore[attr-defined]
            raise
        return StreamingResponse(
            _watch_stream(first, changes),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # -- events ------------------------------------------------------------------------------------

    @router.get("/v1/sessions/{session_id}/events", response_model=EventList, tags=["events"])
    async def list_events(
        session_id: SessionIdPath,
        caller: CallerDep,
        user_id: UserQuery = "default",
        page_size: PageSize = 0,
        page_token: PageToken = "",
        tail: Annotated[int, Query(ge=0, le=100_000, description="Only the last n events")] = 0,
        author: Annotated[str, Query(max_length=256)] = "",
    ) -> EventList:
        """ListEvents, oldest first."""
        events, token = await caller.clients.state.list_events(
            caller.ref(user_id, session_id), page_size, page_token, tail, author
        )
        return EventList(events=[EventOut(**vars(e)) for e in events], next_page_token=token)

    @router.post(
        "/v1/sessions/{session_id}/events", response_model=EventOut, status_code=201, tags=["events"]
    )
    async def append_event(
        session_id: SessionIdPath,
        body: EventIn,
        caller: CallerDep,
        user_id: UserQuery = "default",
        idempotency_key: IdempotencyKey = None,
    ) -> EventOut:
        """AppendEvent."""
        event = await caller.clients.state.append_event(
            caller.ref(user_id, session_id),
            body.role,
            body.content,
            body.author,
            body.metadata,
            idempotency_key,
        )
        return EventOut(**vars(event))

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

    @router.get("/v1/sessions/{session_id}/memories", response_model=MemoryList, tags=["memories"])
    async def list_memories(
        session_id: SessionIdPath,
        caller: CallerDep,
        user_id: UserQuery = "default",
        memory_type: MemoryFilter = "all",
        metadata_filter: Annotated[
            str | None,
            Query(
                max_length=2048,
                description='Only memories whose metadata has these values: a JSON object, e.g. {"k": "v"}',
            ),
        ] = None,
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
        idempotency_key: IdempotencyKey = None,
    ) -> DeletedCount:
        """ClearMemories."""
        count = await caller.clients.memory.clear(
            caller.ref(user_id, session_id), memory_type, idempotency_key
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

    # -- knowledge ---------------------------------------------------------------------------------

    @router.post(
        "/v1/sessions/{session_id}/knowledge", response_model=Ingestion, status_code=201, tags=["knowledge"]
    )
    async def add_knowledge(
        session_id: SessionIdPath,
        body: KnowledgeIn,
        caller: CallerDep,
        user_id: UserQuery = "default",
        idempotency_key: IdempotencyKey = None,
    ) -> Ingestion:
        """AddKnowledgeSource: text, or a URL the service fetches (public hosts only)."""
        if (body.text is None) == (body.url is None):
            raise InvalidArgument(
                "give exactly one of text and url",
                violations=[FieldViolation("body", "exactly one of text, url")],
            )
        ref = caller.ref(user_id, session_id)
        return Ingestion.model_validate(await _add_text_or_url(caller, ref, body, idempotency_key))

    @router.post(
        "/v1/sessions/{session_id}/knowledge/files",
        response_model=Ingestion,
        status_code=201,
        tags=["knowledge"],
    )
    async def upload_knowledge(
        session_id: SessionIdPath,
        caller: CallerDep,
        file: Annotated[UploadFile, File(description="The document (txt, md, pdf, html, docx, csv, json)")],
        user_id: UserQuery = "default",
        name: Annotated[str, Form(max_length=512)] = "",
        scope: Annotated[Scope, Form()] = "session",
        collection: Annotated[str, Form(max_length=128)] = "",
        content_type: Annotated[str, Form(max_length=128)] = "",
        metadata: Annotated[Json[dict[str, object]] | None, Form(description="A JSON object")] = None,
        force: Annotated[bool, Form()] = False,
        idempotency_key: IdempotencyKey = None,
    ) -> Ingestion:
        """UploadKnowledgeFile (multipart/form-data), streamed to the service."""
        file_name = FilePath(file.filename or "upload").name or "upload"
        with tempfile.TemporaryDirectory(prefix="sessionkit-upload-") as tmp:
            path = FilePath(tmp) / file_name
            await asyncio.to_thread(_copy, file, path)
            result = await caller.clients.knowledge.add(
                caller.ref(user_id, session_id),
                path,
                scope=scope,
                collection=collection,
                name=name,
                content_type=content_type or (file.content_type or ""),
                metadata=metadata,  # type: ignore[arg-type]
                force=force,
                idempotency_key=idempotency_key,
            )
        return Ingestion.model_validate(result)

    @router.post(
        "/v1/sessions/{session_id}/knowledge/search", response_model=KnowledgeHits, tags=["knowledge"]
    )
    async def search_knowledge(
        session_id: SessionIdPath, body: KnowledgeSearch, caller: CallerDep, user_id: UserQuery = "default"
    ) -> KnowledgeHits:
        """SearchKnowledge (hybrid)."""
        hits = await caller.clients.knowledge.search(
            caller.ref(user_id, session_id),
            body.query,
            body.limit,
            list(body.scopes) if body.scopes is not None else None,
            body.collections,
            body.source_names,
            body.metadata_filter,
        )
        return KnowledgeHits.model_validate({"hits": hits})

    @router.get("/v1/sessions/{session_id}/knowledge", response_model=SourceList, tags=["knowledge"])
    async def list_knowledge(
        session_id: SessionIdPath,
        caller: CallerDep,
        user_id: UserQuery = "default",
        scope: Annotated[list[Scope] | None, Query(description="Only these scopes (repeatable)")] = None,
    ) -> SourceList:
        """ListKnowledgeSources (every page)."""
        sources = await caller.clients.knowledge.list_all(
            caller.ref(user_id, session_id), list(scope) if scope else None
        )
        return SourceList.model_validate({"sources": sources})

    @router.delete("/v1/sessions/{session_id}/knowledge", response_model=ClearedKnowledge, tags=["knowledge"])
    async def clear_knowledge(
        session_id: SessionIdPath,
        caller: CallerDep,
        user_id: UserQuery = "default",
        scope: Scope = "session",
        collection: Annotated[str, Query(max_length=128)] = "",
        idempotency_key: IdempotencyKey = None,
    ) -> ClearedKnowledge:
        """ClearKnowledge of one scope."""
        request = knowledge_pb2.ClearKnowledgeRequest(
            session=caller.ref(user_id, session_id).message,
            scope=scope_message(scope, collection),
            idempotency_key=idempotency_key or uuid.uuid4().hex,
        )
        reply = await caller.clients.transport.unary("knowledge", KnowledgeStub, "ClearKnowledge", request)
        return ClearedKnowledge(deleted_source_count=int(reply.deleted_source_count))

    @router.delete(
        "/v1/sessions/{session_id}/knowledge/{source:path}", response_model=DeletedSource, tags=["knowledge"]
    )
    async def delete_knowledge(
        session_id: SessionIdPath,
        source: Annotated[str, Path(min_length=1, max_length=512, description="Source id (ks-...) or name")],
        caller: CallerDep,
        user_id: UserQuery = "default",
        scope: Scope = "session",
        allow_missing: bool = False,
        idempotency_key: IdempotencyKey = None,
    ) -> DeletedSource:
        """DeleteKnowledgeSource by id ("ks-...") or name."""
        request = knowledge_pb2.DeleteKnowledgeSourceRequest(
            session=caller.ref(user_id, session_id).message,
            scope=scope_message(scope),
            allow_missing=allow_missing,
            idempotency_key=idempotency_key or uuid.uuid4().hex,
        )
        if source.startswith("ks-"):
            request.source_id = source
        else:
            request.name = source
        reply = await caller.clients.transport.unary(
            "knowledge", KnowledgeStub, "DeleteKnowledgeSource", request
        )
        return DeletedSource(deleted=bool(reply.deleted), deleted_chunk_count=int(reply.deleted_chunk_count))


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


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _watch_stream(first: StateChange, changes: AsyncIterator[StateChange]) -> AsyncIterator[bytes]:
    """The watch's SSE body: one ``change`` event per StateChange. A client that disconnects cancels
    this generator, and closing ``changes`` cancels the WatchState call."""
    try:
        change: StateChange | None = first
        while change is not None:
            yield _sse("change", StateChangeOut(**vars(change)).model_dump(mode="json"))
            change = await anext(changes, None)
    except SessionKitError as error:
        yield _sse("error", error_body(error))
    except Exception as error:  # the stream has started: report in-band, never a traceback
        log.error("state watch failed", exc_info=error)
        yield _sse("error", error_body(InternalError("the watch failed; the gateway log has the details")))
    finally:
        await changes.aclose()  # type: ignore[attr-defined]


def _copy(upload: UploadFile, path: FilePath) -> None:
    upload.file.seek(0)
    with path.open("wb") as out:
        shutil.copyfileobj(upload.file, out, 1 << 20)


async def _add_text_or_url(
    caller: Caller,
    ref: SessionRef,
    body: KnowledgeIn,
    idempotency_key: str | None,
) -> dict[str, Any]:
    """AddKnowledgeSource with the kind the body says. KnowledgeClient.add guesses the kind from the
    string and uploads an existing local path as a file: right in the SDK, but in the gateway a body's
    text naming a path on the gateway's host must never be read from its disk."""
    kind = "url" if body.url is not None else "text"
    request = knowledge_pb2.AddKnowledgeSourceRequest(
        session=ref.message,
        scope=scope_message(body.scope, body.collection),
        name=body.name,
        content_type=body.content_type,
        chunker=chunker_message(body.chunker.model_dump(exclude_none=True) if body.chunker else None),
        metadata=to_struct(check_json(body.metadata or {}, "metadata")),  # type: ignore[arg-type]
        force=body.force,
        idempotency_key=idempotency_key or uuid.uuid4().hex,
    )
    if body.url is not None:
        request.url = body.url
    else:
        request.text = body.text or ""
    transport = caller.clients.transport
    async for message in transport.stream("knowledge", KnowledgeStub, "AddKnowledgeSource", request):
        if message.HasField("result"):
            return result_dict(kind, message.result)
    raise InternalError("the knowledge service ended the stream without a result")
