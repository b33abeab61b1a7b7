"""The memory calls of a remote session over the gateway's REST API (see sessionkit.remote_rest)."""

from __future__ import annotations

import json
from typing import Any

from sessionkit.errors import FieldViolation, InvalidArgument
from sessionkit.explain import check_explain
from sessionkit.jsonvalues import JsonValue, check_json
from sessionkit.memory_client import memory_items, new_memory
from sessionkit.remote_rest import Rest, unsupported
from sessionkit.state_client import SessionRef


class RemoteMemoryClient(Rest):
    """The memory calls AsyncSession makes, over ``/v1/sessions/{id}/memories``."""

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
        body: dict[str, Any] = {"text": text, "memory_type": kind, "metadata": metadata}
        if quality_score is not None:
            body["quality_score"] = quality_score
        return dict(await self.write("POST", ref, "memories", key=idempotency_key, json=body))

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
        body: dict[str, Any] = {
            "query": query,
            "memory_type": kind,
            "limit": limit,
            "min_quality": min_quality,
            "metadata_filter": metadata_filter,
        }
        if check_explain(explain):  # only then: a gateway of before explain refuses the field
            body["explain"] = True
        return list((await self.call("POST", ref, "memories", "search", json=body))["hits"])

    async def context(self, ref: SessionRef, query: str, max_items: int = 3, kind: str = "all") -> str:
        """The memory service's context block (BuildMemoryContext, ``POST .../memories/context``)."""
        if max_items < 1:
            raise InvalidArgument("invalid max_items", violations=[FieldViolation("max_items", "at least 1")])
        body = {"query": query, "max_items": max_items, "memory_type": kind}
        return str((await self.call("POST", ref, "memories", "context", json=body))["context"])

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
        raise unsupported("memory extraction (extract_memories(), memory_config provider 'mem0')")

    async def add_many(
        self,
        ref: SessionRef,
        memories: Any,
        kind: str = "long",
        skip_merge: bool = False,
        idempotency_key: str | None = None,
    ) -> list[dict[str, Any]]:
        """``POST .../memories/batch`` (AddMemories): one transaction; each item keeps its own
        memory_type, quality_score and metadata (checked as the gRPC client checks them)."""
        items = [new_memory(item, n) for n, item in enumerate(memory_items(memories))]
        body = {"memories": items, "memory_type": kind, "skip_merge": skip_merge}
        reply = await self.write("POST", ref, "memories", "batch", key=idempotency_key, json=body)
        return [dict(m) for m in reply["results"]]

    async def clear(
        self,
        ref: SessionRef,
        kind: str = "all",
        idempotency_key: str | None = None,
        metadata_filter: dict[str, JsonValue] | None = None,
    ) -> int:
        params: dict[str, Any] = {"memory_type": kind}
        if metadata_filter:
            params["metadata_filter"] = json.dumps(check_json(metadata_filter, "metadata_filter"))
        reply = await self.write("DELETE", ref, "memories", key=idempotency_key, params=params)
        return int(reply["deleted_count"])

    async def get(self, ref: SessionRef, memory_id: str) -> dict[str, Any]:
        return dict(await self.call("GET", ref, "memories", memory_id))

    async def list_all(
        self, ref: SessionRef, kind: str = "all", metadata_filter: dict[str, JsonValue] | None = None
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"memory_type": kind}
        if metadata_filter:
            params["metadata_filter"] = json.dumps(check_json(metadata_filter, "metadata_filter"))
        return list((await self.call("GET", ref, "memories", params=params))["memories"])

    async def update(
        self,
        ref: SessionRef,
        memory_id: str,
        text: str | None = None,
        metadata: dict[str, JsonValue] | None = None,
        quality_score: float | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        body = {
            k: v
            for k, v in (("text", text), ("metadata", metadata), ("quality_score", quality_score))
            if v is not None
        }
        return dict(await self.write("PATCH", ref, "memories", memory_id, key=idempotency_key, json=body))

    async def delete(self, ref: SessionRef, memory_id: str, idempotency_key: str | None = None) -> bool:
        reply = await self.write("DELETE", ref, "memories", memory_id, key=idempotency_key)
        return bool(reply["deleted"])

    async def history(self, ref: SessionRef, memory_id: str) -> list[dict[str, Any]]:
        return list((await self.call("GET", ref, "memories", memory_id, "history"))["changes"])
