"""REST over the knowledge service: add (text, URL, uploaded files), search, list and delete sources;
each route converts the HTTP request to one SDK client call and its result to the response model."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Path, Query, UploadFile
from pydantic import Json

from sessionkit.errors import FieldViolation, InternalError, InvalidArgument
from sessionkit.jsonvalues import check_json, to_struct
from sessionkit.knowledge_client import Stub as KnowledgeStub
from sessionkit.knowledge_client import chunker_message, result_dict, scope_message
from sessionkit.state_client import SessionRef
from sessionkit.v1 import knowledge_pb2
from sessionkit_server.gateway.deps import (
    Caller,
    CallerDep,
    IdempotencyKey,
    SessionIdPath,
    UserQuery,
)
from sessionkit_server.gateway.models import (
    ClearedKnowledge,
    DeletedSource,
    Ingestion,
    KnowledgeHits,
    KnowledgeIn,
    KnowledgeSearch,
    Scope,
    SourceList,
)


def add(router: APIRouter) -> None:
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
            body.explain,
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
