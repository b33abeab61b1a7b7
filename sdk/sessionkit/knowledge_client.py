"""Typed async client of the knowledge service (used by AsyncSession and the CLI); results are plain
dicts. ``add`` decides what a source is: an existing file path is uploaded (streamed from disk in
256 KiB messages: the service never reads client paths, and the client never holds the whole file), an
http(s):// string is a URL the service fetches, anything else is text.

Every write carries one idempotency key for all its attempts, so the SDK retries them (transient
errors: UNAVAILABLE, DEADLINE_EXCEEDED) safely: an ingestion whose reply was lost is answered with the
first attempt's result, not run again. An upload is retried from the start of the file."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from sessionkit.errors import FieldViolation, InvalidArgument
from sessionkit.explain import check_explain, explanation_dict
from sessionkit.jsonvalues import JsonValue, check_json, from_struct, to_struct
from sessionkit.state_client import SessionRef, _key
from sessionkit.transport import Transport
from sessionkit.v1 import common_pb2, knowledge_pb2, knowledge_pb2_grpc

Stub = knowledge_pb2_grpc.KnowledgeServiceStub
UPLOAD_CHUNK_BYTES = 256 << 10
SCOPES = {"session": 1, "user": 2, "collection": 3}
SCOPE_NAMES = {v: k for k, v in SCOPES.items()}
KIND_NAMES = {1: "file", 2: "url", 3: "text"}
CHUNKERS = {"token": 1, "sentence": 2, "recursive": 3, "semantic": 4}
CHUNKER_NAMES = {v: k for k, v in CHUNKERS.items()}
CHUNKER_KEYS = {"type", "chunk_size", "chunk_overlap", "semantic_threshold"}
KNOWLEDGE_CONFIG_KEYS = {"chunker", "vector_store"}
OUTCOMES = {1: "created", 2: "updated", 3: "unchanged"}
STAGES = {1: "receiving", 2: "fetching", 3: "parsing", 4: "chunking", 5: "embedding", 6: "storing"}
ProgressCallback = Callable[[dict[str, Any]], None]


def check_knowledge_config(config: dict[str, Any]) -> None:
    """The seed's knowledge_config: {"chunker": {"type", "chunk_size", "chunk_overlap"}, "vector_store":
    {...}} (vector_store is accepted: vectors live in the server's index). Unknown keys are refused,
    naming the key."""
    for key in config:
        if key not in KNOWLEDGE_CONFIG_KEYS:
            raise InvalidArgument(
                f"unknown knowledge_config key {key!r}",
                violations=[
                    FieldViolation(
                        f"knowledge_config.{key}", f"allowed: {', '.join(sorted(KNOWLEDGE_CONFIG_KEYS))}"
                    )
                ],
            )
    chunker_message(config.get("chunker"))


def chunker_message(chunker: Any) -> knowledge_pb2.KnowledgeChunker:
    if chunker is None:
        return knowledge_pb2.KnowledgeChunker()
    if not isinstance(chunker, dict):
        raise InvalidArgument("knowledge_config.chunker must be a dict")
    for key in chunker:
        if key not in CHUNKER_KEYS:
            raise InvalidArgument(
                f"unknown knowledge_config key 'chunker.{key}'",
                violations=[
                    FieldViolation(
                        f"knowledge_config.chunker.{key}", f"allowed: {', '.join(sorted(CHUNKER_KEYS))}"
                    )
                ],
            )
    kind = chunker.get("type", "recursive")
    if kind not in CHUNKERS:
        raise InvalidArgument(
            f"unknown chunker type {kind!r}",
            violations=[FieldViolation("knowledge_config.chunker.type", f"one of {', '.join(CHUNKERS)}")],
        )
    for key in ("chunk_size", "chunk_overlap"):
        value = chunker.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise InvalidArgument(
                f"knowledge_config.chunker.{key} must be an int",
                violations=[FieldViolation(f"knowledge_config.chunker.{key}", "an integer")],
            )
    message = knowledge_pb2.KnowledgeChunker(
        strategy=CHUNKERS[kind],  # type: ignore[arg-type]
        chunk_size=chunker.get("chunk_size") or 0,
    )
    if chunker.get("chunk_overlap") is not None:
        message.chunk_overlap = chunker["chunk_overlap"]
    if chunker.get("semantic_threshold") is not None:
        message.semantic_threshold = float(chunker["semantic_threshold"])
    return message


def scope_message(scope: str, collection: str = "") -> knowledge_pb2.KnowledgeScope:
    if scope not in SCOPES:
        raise InvalidArgument(
            f"invalid scope {scope!r}", violations=[FieldViolation("scope", "session, user or collection")]
        )
    return knowledge_pb2.KnowledgeScope(kind=SCOPES[scope], collection=collection)  # type: ignore[arg-type]


def source_kind(source: str | os.PathLike[str]) -> str:
    """ "file" for an existing file, "url" for http(s)://..., else "text"."""
    if isinstance(source, os.PathLike):
        return "file"
    if not isinstance(source, str):
        raise InvalidArgument(f"a knowledge source must be a str or a path, not {type(source).__name__}")
    if source.startswith(("http://", "https://")):
        return "url"
    try:
        if len(source) < 4096 and "\n" not in source and Path(source).is_file():
            return "file"
    except OSError:
        pass
    return "text"


def _time(ts: Any) -> str | None:
    if not ts.seconds and not ts.nanos:
        return None
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC).isoformat()


def source_dict(s: knowledge_pb2.KnowledgeSource) -> dict[str, Any]:
    return {
        "id": s.id,
        "name": s.name,
        "kind": KIND_NAMES.get(s.kind, "unknown"),
        "scope": SCOPE_NAMES.get(s.scope.kind, "session"),
        "collection": s.scope.collection or None,
        "uri": s.uri or None,
        "content_type": s.content_type,
        "title": s.title or None,
        "content_hash": s.content_hash,
        "size_bytes": s.size_bytes,
        "chunk_count": s.chunk_count,
        "chunker": {
            "type": CHUNKER_NAMES.get(s.chunker.strategy, "recursive"),
            "chunk_size": s.chunker.chunk_size,
            "chunk_overlap": s.chunker.chunk_overlap,
            **(
                {"semantic_threshold": s.chunker.semantic_threshold}
                if s.chunker.HasField("semantic_threshold")
                else {}
            ),
        },
        "metadata": from_struct(s.metadata),
        "created_at": _time(s.create_time),
        "updated_at": _time(s.update_time),
    }


def hit_dict(h: knowledge_pb2.KnowledgeHit) -> dict[str, Any]:
    out = {
        "chunk_id": h.chunk_id,
        "text": h.text,
        "score": h.score,
        "scores": {"semantic": h.scores.semantic, "lexical": h.scores.lexical},
        "source": {
            "id": h.source_id,
            "name": h.source_name,
            "kind": KIND_NAMES.get(h.source_kind, "unknown"),
        },
        "scope": SCOPE_NAMES.get(h.scope.kind, "session"),
        "position": {
            "chunk_index": h.position.chunk_index,
            "page": h.position.page or None,
            "start_char": h.position.start_char,
            "end_char": h.position.end_char,
        },
        "heading_path": list(h.heading_path),
        "metadata": from_struct(h.metadata),
    }
    if h.HasField("explanation"):
        out["explanation"] = explanation_dict(h.explanation)
    return out


def progress_dict(p: knowledge_pb2.KnowledgeIngestionProgress) -> dict[str, Any]:
    return {
        "stage": STAGES.get(p.stage, "unknown"),
        "bytes_read": p.bytes_read,
        "bytes_total": p.bytes_total,
        "chunks_created": p.chunks_created,
        "chunks_embedded": p.chunks_embedded,
        "chunks_total": p.chunks_total,
    }


def result_dict(kind: str, r: knowledge_pb2.KnowledgeIngestionResult) -> dict[str, Any]:
    return {
        "kind": kind,
        "outcome": OUTCOMES.get(r.outcome, "unknown"),
        "source": source_dict(r.source),
        "chunks_added": r.chunks_added,
        "chunks_removed": r.chunks_removed,
        "seconds": r.duration.seconds + r.duration.nanos / 1e9,
    }


def _struct(value: dict[str, Any] | None, field: str) -> Any:
    checked = check_json(value or {}, field)
    if not isinstance(checked, dict):
        raise InvalidArgument(f"{field} must be a dict")
    return to_struct(checked)


class KnowledgeClient:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def _call(self, method: str, request: Any) -> Any:
        return await self.transport.unary("knowledge", Stub, method, request)

    async def add(
        self,
        ref: SessionRef,
        source: str | os.PathLike[str],
        *,
        scope: str = "session",
        collection: str = "",
        name: str = "",
        content_type: str = "",
        chunker: dict[str, Any] | None = None,
        metadata: dict[str, JsonValue] | None = None,
        force: bool = False,
        on_progress: ProgressCallback | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Add (or replace) a source; the result says which kind the source was taken for.
        ``idempotency_key``: sent with every attempt (default: a fresh one per call); a repeat within
        24 hours answers the first call's result."""
        kind = source_kind(source)
        chunker_msg = chunker_message(chunker)
        scope_msg = scope_message(scope, collection)
        meta = _struct(metadata, "metadata")
        key = _key(idempotency_key)
        if kind == "file":
            return await self._upload(
                ref, Path(source), scope_msg, name, content_type, chunker_msg, meta, force, on_progress, key
            )
        request = knowledge_pb2.AddKnowledgeSourceRequest(
            session=ref.message,
            scope=scope_msg,
            name=name,
            content_type=content_type,
            chunker=chunker_msg,
            metadata=meta,
            report_progress=on_progress is not None,
            force=force,
            idempotency_key=key,
        )
        if kind == "url":
            request.url = str(source)
        else:
            request.text = str(source)

        async def attempt(remaining: float) -> dict[str, Any]:
            # No per-call deadline (an ingestion takes as long as the document needs): ``remaining``
            # bounds only when a new attempt may start.
            stub = await self.transport.stub("knowledge", Stub)
            call = stub.AddKnowledgeSource(request)
            try:
                async for message in call:
                    if message.HasField("progress") and on_progress is not None:
                        on_progress(progress_dict(message.progress))
                    elif message.HasField("result"):
                        return result_dict(kind, message.result)
            except grpc.RpcError as error:
                raise self.transport._error("knowledge", error) from None
            finally:
                call.cancel()
            raise InvalidArgument("the knowledge service ended the stream without a result")

        return await self.transport.retry(attempt)

    async def _upload(
        self,
        ref: SessionRef,
        path: Path,
        scope: knowledge_pb2.KnowledgeScope,
        name: str,
        content_type: str,
        chunker: knowledge_pb2.KnowledgeChunker,
        metadata: Any,
        force: bool,
        on_progress: ProgressCallback | None,
        key: str,
    ) -> dict[str, Any]:
        """Upload ``path`` (hashed, then streamed from disk) with retries; every attempt sends the
        file from its start under the same idempotency key."""
        size, digest = await asyncio.to_thread(_size_and_hash, path)
        header = knowledge_pb2.KnowledgeFileHeader(
            session=ref.message,
            scope=scope,
            file_name=path.name,
            name=name,
            content_type=content_type,
            size_bytes=size,
            sha256=digest,
            chunker=chunker,
            metadata=metadata,
            report_progress=on_progress is not None,
            force=force,
            idempotency_key=key,
        )

        async def attempt(remaining: float) -> dict[str, Any]:
            # No per-call deadline, as for AddKnowledgeSource: parsing and embedding a large file
            # takes as long as it takes; a dropped connection fails the attempt (UNAVAILABLE).
            stub = await self.transport.stub("knowledge", Stub)
            call = stub.UploadKnowledgeFile()

            async def send() -> None:
                # One part in memory at a time, read off the event loop. Stops quietly when the call
                # has ended (the server refused the file early, or replayed a repeated key): the
                # call's status, read below, says why.
                try:
                    await call.write(knowledge_pb2.UploadKnowledgeFileRequest(header=header))
                    with path.open("rb") as handle:
                        while part := await asyncio.to_thread(handle.read, UPLOAD_CHUNK_BYTES):
                            await call.write(knowledge_pb2.UploadKnowledgeFileRequest(chunk=part))
                    await call.done_writing()
                except (grpc.RpcError, asyncio.InvalidStateError):
                    return

            sender = asyncio.create_task(send())
            try:
                async for message in call:
                    if message.HasField("progress") and on_progress is not None:
                        on_progress(progress_dict(message.progress))
                    elif message.HasField("result"):
                        return result_dict("file", message.result)
            except grpc.RpcError as error:
                raise self.transport._error("knowledge", error) from None
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
                call.cancel()
            raise InvalidArgument("the knowledge service ended the upload without a result")

        return await self.transport.retry(attempt)

    async def search(
        self,
        ref: SessionRef,
        query: str,
        limit: int = 5,
        scopes: list[str] | None = None,
        collections: list[str] | None = None,
        source_names: list[str] | None = None,
        metadata_filter: dict[str, JsonValue] | None = None,
        explain: bool = False,
    ) -> list[dict[str, Any]]:
        if limit < 1:
            raise InvalidArgument("invalid limit", violations=[FieldViolation("limit", "must be at least 1")])
        scope_msgs = [scope_message(s) for s in scopes or []]
        scope_msgs += [scope_message("collection", c) for c in collections or []]
        request = knowledge_pb2.SearchKnowledgeRequest(
            session=ref.message,
            query=query,
            limit=limit,
            scopes=scope_msgs,
            source_names=source_names or [],
            metadata_filter=_struct(metadata_filter, "metadata_filter"),
            explain=check_explain(explain),
        )
        reply = await self._call("SearchKnowledge", request)
        return [hit_dict(h) for h in reply.hits]

    async def list_all(self, ref: SessionRef, scopes: list[str] | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        token = ""
        while True:
            request = knowledge_pb2.ListKnowledgeSourcesRequest(
                session=ref.message,
                scopes=[scope_message(s) for s in scopes or []],
                page_size=500,
                page_token=token,
            )
            reply = await self._call("ListKnowledgeSources", request)
            out.extend(source_dict(s) for s in reply.sources)
            token = reply.next_page_token
            if not token:
                return out

    async def delete(
        self, ref: SessionRef, source: str, scope: str = "session", allow_missing: bool = False
    ) -> int | None:
        """Delete a source by id ("ks-...") or name: its chunk count, None when missing (allow_missing)."""
        request = knowledge_pb2.DeleteKnowledgeSourceRequest(
            session=ref.message,
            scope=scope_message(scope),
            allow_missing=allow_missing,
            idempotency_key=_key(None),
        )
        if source.startswith("ks-"):
            request.source_id = source
        else:
            request.name = source
        reply = await self._call("DeleteKnowledgeSource", request)
        return int(reply.deleted_chunk_count) if reply.deleted else None

    async def clear(self, ref: SessionRef, scope: str = "session", collection: str = "") -> int:
        request = knowledge_pb2.ClearKnowledgeRequest(
            session=ref.message, scope=scope_message(scope, collection), idempotency_key=_key(None)
        )
        return int((await self._call("ClearKnowledge", request)).deleted_source_count)

    async def reindex(self, app_name: str, all_apps: bool = False) -> tuple[int, int]:
        """Rebuild the vector index from the knowledge chunk rows: (rows scanned, vectors written)."""
        request = knowledge_pb2.ReindexKnowledgeRequest(
            session=common_pb2.SessionRef(app_name=app_name), all_users=all_apps
        )
        reply = await self._call("ReindexKnowledge", request)
        return int(reply.scanned_count), int(reply.indexed_count)


def _size_and_hash(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while part := handle.read(1 << 20):
            digest.update(part)
            size += len(part)
    return size, digest.hexdigest()
