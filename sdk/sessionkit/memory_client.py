"""Typed async client of the memory service (used by AsyncSession and the CLI); results are plain
dicts, as the seed's ``search_memory`` documents (``List[Dict[str, Any]]``).

Every write carries an idempotency key (a fresh uuid4 per call unless given), kept across the
transport's retries: a write whose reply was lost is applied once."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sessionkit.errors import FieldViolation, InvalidArgument
from sessionkit.explain import check_explain, explanation_dict
from sessionkit.jsonvalues import JsonValue, check_json, from_struct, to_struct
from sessionkit.state_client import SessionRef, _key
from sessionkit.transport import Transport
from sessionkit.v1 import common_pb2, memory_pb2, memory_pb2_grpc

Stub = memory_pb2_grpc.MemoryServiceStub
TYPES = {"short": memory_pb2.MEMORY_TYPE_SHORT, "long": memory_pb2.MEMORY_TYPE_LONG, "all": 0}
NAMES = {memory_pb2.MEMORY_TYPE_SHORT: "short", memory_pb2.MEMORY_TYPE_LONG: "long"}
MESSAGE_KEYS = {"role", "content", "name"}
NEW_MEMORY_KEYS = {"text", "memory_type", "quality_score", "metadata"}


def memory_type(value: str, field: str = "memory_type", allow_all: bool = True) -> int:
    choices = TYPES if allow_all else {k: v for k, v in TYPES.items() if k != "all"}
    if value not in choices:
        raise InvalidArgument(
            f"invalid {field} {value!r}",
            violations=[FieldViolation(field, f"must be one of {', '.join(map(repr, choices))}")],
        )
    return choices[value]


def _time(ts: Any) -> str | None:
    if not ts.seconds and not ts.nanos:
        return None
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC).isoformat()


def memory_dict(m: memory_pb2.Memory) -> dict[str, Any]:
    return {
        "id": m.id,
        "text": m.text,
        "memory_type": NAMES.get(m.memory_type, "unknown"),
        "quality_score": m.quality_score,
        "metadata": from_struct(m.metadata),
        "session_id": m.session.session_id,
        "user_id": m.session.user_id,
        "created_at": _time(m.create_time),
        "updated_at": _time(m.update_time),
        "revision": m.revision,
    }


def hit_dict(h: memory_pb2.MemoryHit) -> dict[str, Any]:
    out = memory_dict(h.memory)
    out["score"] = h.score
    out["scores"] = {
        "semantic": h.scores.semantic,
        "lexical": h.scores.lexical,
        "quality": h.scores.quality,
        "recency": h.scores.recency,
    }
    if h.HasField("explanation"):
        out["explanation"] = explanation_dict(h.explanation)
    return out


def operation_dict(o: memory_pb2.MemoryOperation) -> dict[str, Any]:
    return {
        "type": memory_pb2.MemoryOperation.Type.Name(o.type),
        "fact": o.fact,
        "old_text": o.old_text or None,
        "memory": memory_dict(o.memory) if o.HasField("memory") else None,
    }


def conversation(messages: Any) -> list[memory_pb2.ConversationMessage]:
    """``[{"role": "user", "content": "..."}, ...]`` (an optional "name" too) as request messages."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InvalidArgument(
            "messages must be a non-empty list of {'role': ..., 'content': ...} dicts",
            violations=[FieldViolation("messages", "at least one message")],
        )
    out: list[memory_pb2.ConversationMessage] = []
    for n, message in enumerate(messages):
        where = f"messages[{n}]"
        if not isinstance(message, dict):
            raise InvalidArgument(
                f"{where} must be a dict", violations=[FieldViolation(where, "{'role': ..., 'content': ...}")]
            )
        unknown = set(message) - MESSAGE_KEYS
        if unknown:
            raise InvalidArgument(
                f"{where} has unknown keys {sorted(unknown)}",
                violations=[FieldViolation(where, "allowed keys: content, name, role")],
            )
        for key in ("role", "content", "name"):
            value = message.get(key, "")
            if not isinstance(value, str) or (key == "role" and not value.strip()):
                raise InvalidArgument(
                    f"invalid {where}.{key}",
                    violations=[FieldViolation(f"{where}.{key}", "must be a non-empty string")]
                    if key == "role"
                    else [FieldViolation(f"{where}.{key}", "must be a string")],
                )
        out.append(
            memory_pb2.ConversationMessage(
                role=message["role"], content=message.get("content", ""), name=message.get("name", "")
            )
        )
    return out


def memory_items(memories: Any) -> list[Any]:
    if not isinstance(memories, (list, tuple)) or not memories:
        raise InvalidArgument(
            "memories must be a non-empty list of texts or dicts",
            violations=[FieldViolation("memories", "at least one memory")],
        )
    return list(memories)


def new_memory(item: Any, n: int) -> dict[str, Any]:
    """One item of an AddMemories batch as a checked dict: a text, or ``{"text", "memory_type",
    "quality_score", "metadata"}`` (only "text" required)."""
    where = f"memories[{n}]"
    if isinstance(item, str):
        item = {"text": item}
    if not isinstance(item, dict):
        raise InvalidArgument(
            f"{where} must be a str or a dict",
            violations=[FieldViolation(where, "a text, or {'text': ..., 'metadata': ...}")],
        )
    unknown = set(item) - NEW_MEMORY_KEYS
    if unknown:
        raise InvalidArgument(
            f"{where} has unknown keys {sorted(unknown)}",
            violations=[FieldViolation(where, f"allowed keys: {', '.join(sorted(NEW_MEMORY_KEYS))}")],
        )
    if not isinstance(item.get("text"), str):
        raise InvalidArgument(
            f"{where}.text must be a str", violations=[FieldViolation(f"{where}.text", "a string")]
        )
    if "memory_type" in item:
        memory_type(item["memory_type"], f"{where}.memory_type", allow_all=False)
    if item.get("metadata") is not None:
        _struct(item["metadata"], f"{where}.metadata")
    return {k: v for k, v in item.items() if v is not None}


def _struct(value: dict[str, Any] | None, field: str) -> Any:
    checked = check_json(value or {}, field)
    if not isinstance(checked, dict):
        raise InvalidArgument(f"{field} must be a dict")
    return to_struct(checked)


class MemoryClient:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def _call(self, method: str, request: Any) -> Any:
        return await self.transport.unary("memory", Stub, method, request)

    async def add(
        self,
        ref: SessionRef,
        text: str,
        kind: str = "long",
        quality_score: float | None = None,
        metadata: dict[str, JsonValue] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        if not isinstance(text, str):
            raise InvalidArgument(f"memory text must be a str, not {type(text).__name__}")
        request = memory_pb2.AddMemoryRequest(
            session=ref.message,
            text=text,
            memory_type=memory_type(kind, allow_all=False),  # type: ignore[arg-type]
            quality_score=quality_score,
            metadata=_struct(metadata, "metadata"),
            actor="user",
            idempotency_key=_key(idempotency_key),
        )
        reply = await self._call("AddMemory", request)
        out = memory_dict(reply.memory)
        out["deduplicated"] = reply.deduplicated
        out["merged"] = reply.merged
        return out

    async def add_many(
        self,
        ref: SessionRef,
        memories: Any,
        kind: str = "long",
        skip_merge: bool = False,
        idempotency_key: str | None = None,
    ) -> list[dict[str, Any]]:
        """Store many memories in one call (one transaction, one batched embedding on the server).
        ``memories``: texts, or dicts ``{"text", "memory_type", "quality_score", "metadata"}`` (only
        "text" required; ``kind`` is the default memory type). Returns one memory dict per item, in
        order, each with ``deduplicated`` and ``merged`` as ``add`` returns them."""
        items = []
        for n, item in enumerate(memory_items(memories)):
            checked = new_memory(item, n)
            items.append(
                memory_pb2.NewMemory(
                    text=checked["text"],
                    memory_type=memory_type(  # type: ignore[arg-type]
                        checked.get("memory_type", kind), f"memories[{n}].memory_type", allow_all=False
                    ),
                    quality_score=checked.get("quality_score"),
                    metadata=_struct(checked.get("metadata"), f"memories[{n}].metadata"),
                )
            )
        request = memory_pb2.AddMemoriesRequest(
            session=ref.message,
            memories=items,
            skip_merge=skip_merge,
            actor="user",
            idempotency_key=_key(idempotency_key),
        )
        reply = await self._call("AddMemories", request)
        out: list[dict[str, Any]] = []
        for result in reply.results:
            memory = memory_dict(result.memory)
            memory["deduplicated"] = result.deduplicated
            memory["merged"] = result.merged
            out.append(memory)
        return out

    async def search(
        self,
        ref: SessionRef,
        query: str,
        kind: str = "all",
        limit: int = 5,
        min_quality: float | None = None,
        metadata_filter: dict[str, JsonValue] | None = None,
        explain: bool = False,
    ) -> list[dict[str, Any]]:
        request = memory_pb2.SearchMemoriesRequest(
            session=ref.message,
            query=query,
            memory_type=memory_type(kind),  # type: ignore[arg-type]
            limit=limit,
            min_quality=min_quality,
            metadata_filter=_struct(metadata_filter, "metadata_filter"),
            explain=check_explain(explain),
        )
        if limit < 1:
            raise InvalidArgument("invalid limit", violations=[FieldViolation("limit", "must be at least 1")])
        reply = await self._call("SearchMemories", request)
        return [hit_dict(h) for h in reply.hits]

    async def context(self, ref: SessionRef, query: str, max_items: int = 3, kind: str = "all") -> str:
        if max_items < 1:
            raise InvalidArgument("invalid max_items", violations=[FieldViolation("max_items", "at least 1")])
        request = memory_pb2.BuildMemoryContextRequest(
            session=ref.message,
            query=query,
            max_items=max_items,
            memory_type=memory_type(kind),  # type: ignore[arg-type]
        )
        return str((await self._call("BuildMemoryContext", request)).context)

    async def extract(
        self,
        ref: SessionRef,
        messages: Any,
        kind: str = "long",
        metadata: dict[str, JsonValue] | None = None,
        dry_run: bool = False,
        idempotency_key: str | None = None,
        quality: float | None = None,
    ) -> dict[str, Any]:
        """LLM fact extraction from a conversation turn: ``{"operations": [{"type", "fact", "old_text",
        "memory"}], "model": ..., "extraction_failed": bool}``. ``quality``: of every memory it adds."""
        request = memory_pb2.ExtractMemoriesRequest(
            session=ref.message,
            messages=conversation(messages),
            memory_type=memory_type(kind, allow_all=False),  # type: ignore[arg-type]
            metadata=_struct(metadata, "metadata"),
            dry_run=dry_run,
            idempotency_key=_key(idempotency_key),
            quality_score=quality,
        )
        reply = await self._call("ExtractMemories", request)
        operations = [operation_dict(o) for o in reply.operations]
        return {
            "operations": operations,
            "model": reply.model,
            # The LLM's answers were unusable: the user's text was stored as it is.
            "extraction_failed": any(
                o["memory"] is not None and o["memory"]["metadata"].get("extraction") == "failed"
                for o in operations
            ),
        }

    async def clear(
        self,
        ref: SessionRef,
        kind: str = "all",
        idempotency_key: str | None = None,
        metadata_filter: dict[str, JsonValue] | None = None,
    ) -> int:
        """Delete this session's short-term and/or this user's long-term memories (only those whose
        metadata has these exact values, with ``metadata_filter``); returns how many."""
        request = memory_pb2.ClearMemoriesRequest(
            session=ref.message,
            memory_type=memory_type(kind),  # type: ignore[arg-type]
            idempotency_key=_key(idempotency_key),
        )
        if metadata_filter:
            request.metadata_filter.CopyFrom(_struct(metadata_filter, "metadata_filter"))
        return int((await self._call("ClearMemories", request)).deleted_count)

    async def get(self, ref: SessionRef, memory_id: str) -> dict[str, Any]:
        reply = await self._call(
            "GetMemory", memory_pb2.GetMemoryRequest(session=ref.message, memory_id=memory_id)
        )
        return memory_dict(reply.memory)

    async def list_all(
        self, ref: SessionRef, kind: str = "all", metadata_filter: dict[str, JsonValue] | None = None
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        token = ""
        while True:
            request = memory_pb2.ListMemoriesRequest(
                session=ref.message,
                memory_type=memory_type(kind),  # type: ignore[arg-type]
                metadata_filter=_struct(metadata_filter, "metadata_filter"),
                page_size=500,
                page_token=token,
            )
            reply = await self._call("ListMemories", request)
            out.extend(memory_dict(m) for m in reply.memories)
            token = reply.next_page_token
            if not token:
                return out

    async def update(
        self,
        ref: SessionRef,
        memory_id: str,
        text: str | None = None,
        metadata: dict[str, JsonValue] | None = None,
        quality_score: float | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        request = memory_pb2.UpdateMemoryRequest(
            session=ref.message,
            memory_id=memory_id,
            text=text,
            quality_score=quality_score,
            actor="user",
            idempotency_key=_key(idempotency_key),
        )
        if metadata is not None:
            request.metadata.CopyFrom(_struct(metadata, "metadata"))
        return memory_dict((await self._call("UpdateMemory", request)).memory)

    async def delete(self, ref: SessionRef, memory_id: str, idempotency_key: str | None = None) -> bool:
        request = memory_pb2.DeleteMemoryRequest(
            session=ref.message, memory_id=memory_id, actor="user", idempotency_key=_key(idempotency_key)
        )
        return bool((await self._call("DeleteMemory", request)).deleted)

    async def history(self, ref: SessionRef, memory_id: str) -> list[dict[str, Any]]:
        request = memory_pb2.ListMemoryChangesRequest(
            session=ref.message, memory_id=memory_id, page_size=1000
        )
        reply = await self._call("ListMemoryChanges", request)
        return [
            {
                "operation": memory_pb2.MemoryChange.Operation.Name(c.operation),
                "old_text": c.old_text or None,
                "new_text": c.new_text or None,
                "old_quality_score": c.old_quality_score if c.HasField("old_quality_score") else None,
                "new_quality_score": c.new_quality_score if c.HasField("new_quality_score") else None,
                "actor": c.actor,
                "revision": c.revision,
                "time": _time(c.time),
            }
            for c in reply.changes
        ]

    async def reindex(self, app_name: str, all_apps: bool = False) -> tuple[int, int]:
        """Rebuild the vector index from the memory rows: (rows scanned, vectors written)."""
        request = memory_pb2.ReindexMemoriesRequest(
            session=common_pb2.SessionRef(app_name=app_name), all_users=all_apps
        )
        reply = await self._call("ReindexMemories", request)
        return int(reply.scanned_count), int(reply.indexed_count)
