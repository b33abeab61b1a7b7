"""The knowledge calls of a remote session over the gateway's REST API (see sessionkit.remote_rest)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from sessionkit.errors import FieldViolation, InvalidArgument
from sessionkit.explain import check_explain
from sessionkit.jsonvalues import JsonValue, check_json
from sessionkit.knowledge_client import ProgressCallback, source_kind
from sessionkit.remote_rest import Rest, unsupported
from sessionkit.state_client import SessionRef


class RemoteKnowledgeClient(Rest):
    """The knowledge calls AsyncSession makes, over ``/v1/sessions/{id}/knowledge``."""

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
        """A file path on this machine is uploaded (multipart), a URL is fetched by the service, anything
        else is text. Re-adding a source of the same name replaces it, so a repeat is harmless."""
        kind = source_kind(source)
        if kind == "file":
            if chunker:
                raise unsupported("knowledge_config 'chunker' for uploaded files")
            path = Path(source)
            form = {"name": name, "scope": scope, "collection": collection, "content_type": content_type}
            form["force"] = "true" if force else "false"
            if metadata is not None:
                form["metadata"] = json.dumps(check_json(metadata, "metadata"))
            # Read in a thread (no blocking I/O on the loop); the gateway caps uploads, so this is bounded,
            # and bytes can be sent again as they are when the upload is retried.
            content = await asyncio.to_thread(path.read_bytes)
            files = {"file": (path.name, content, content_type or "application/octet-stream")}
            reply = await self.write(
                "POST", ref, "knowledge", "files", key=idempotency_key, files=files, data=form
            )
        else:
            body: dict[str, Any] = {
                "url" if kind == "url" else "text": str(source),
                "name": name,
                "scope": scope,
                "collection": collection,
                "content_type": content_type,
                "chunker": chunker,
                "metadata": metadata,
                "force": force,
            }
            reply = await self.write("POST", ref, "knowledge", key=idempotency_key, json=body)
        reply = dict(reply)
        reply["kind"] = kind
        return reply

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
        body: dict[str, Any] = {
            "query": query,
            "limit": limit,
            "scopes": scopes,
            "collections": collections,
            "source_names": source_names,
            "metadata_filter": metadata_filter,
        }
        if check_explain(explain):  # only then: a gateway of before explain refuses the field
            body["explain"] = True
        return list((await self.call("POST", ref, "knowledge", "search", json=body))["hits"])

    async def list_all(self, ref: SessionRef, scopes: list[str] | None = None) -> list[dict[str, Any]]:
        return list((await self.call("GET", ref, "knowledge", params={"scope": scopes or None}))["sources"])

    async def delete(
        self, ref: SessionRef, source: str, scope: str = "session", allow_missing: bool = False
    ) -> int | None:
        params = {"scope": scope, "allow_missing": allow_missing}
        reply = await self.write("DELETE", ref, "knowledge", source, key=None, params=params)
        return int(reply["deleted_chunk_count"]) if reply["deleted"] else None

    async def clear(self, ref: SessionRef, scope: str = "session", collection: str = "") -> int:
        params = {"scope": scope, "collection": collection}
        reply = await self.write("DELETE", ref, "knowledge", key=None, params=params)
        return int(reply["deleted_source_count"])
