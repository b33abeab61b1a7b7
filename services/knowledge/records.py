"""The knowledge service's records: scopes, sources and their chunks, and where a scope's vectors live."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row, and_, or_

from sessionkit.jsonvalues import JsonValue, dumps, loads
from sessionkit_server.knowledge import tables as t
from sessionkit_server.retrieval.vector_index import partition

JsonObject = dict[str, JsonValue]


@dataclass(frozen=True)
class Scope:
    """Where a source lives: (kind, owner, key) as stored (see tables.sources)."""

    kind: int
    owner: str
    key: str

    @property
    def bucket(self) -> str:
        """The vector index's tag for this scope."""
        return f"{self.kind}\x1f{self.owner}\x1f{self.key}"


def app_collection(app_name: str) -> str:
    """The logical name of an app's knowledge vectors: its partitions are named after it (and, before
    partitions, it was the app's one collection, filtered by bucket)."""
    return f"knowledge:{app_name}"


def vector_collection(app_name: str, scope: Scope) -> str:
    """Where the vectors of a scope's chunks live: one collection (partition) per scope, so a search
    queries each of its scopes without a filter (a filtered Chroma query costs time linear in the
    collection's size, whatever it matches)."""
    return partition(app_collection(app_name), str(scope.kind), scope.owner, scope.key)


@dataclass
class SourceRecord:
    id: str
    app_name: str
    scope: Scope
    name: str
    kind: int
    user_id: str
    session_id: str
    uri: str
    content_type: str
    title: str
    content_hash: str
    size_bytes: int
    chunk_count: int
    chunker: JsonObject
    metadata: JsonObject
    version: int
    create_us: int
    update_us: int


@dataclass
class ChunkRecord:
    id: str
    source_id: str
    version: int
    app_name: str
    chunk_index: int
    text: str
    page: int
    start_char: int
    end_char: int
    heading_path: list[str] = field(default_factory=list)


def source_of(row: Row[Any]) -> SourceRecord:
    m = row._mapping
    return SourceRecord(
        m["id"], m["app_name"], Scope(m["scope_kind"], m["owner"], m["scope_key"]), m["name"], m["kind"],
        m["user_id"], m["session_id"], m["uri"], m["content_type"], m["title"], m["content_hash"],
        m["size_bytes"], m["chunk_count"], loads(m["chunker"]), loads(m["metadata"]), m["version"],
        m["create_us"], m["update_us"],
    )  # fmt: skip


def chunk_of(row: Row[Any]) -> ChunkRecord:
    m = row._mapping
    path = loads(m["heading_path"])
    return ChunkRecord(
        m["id"], m["source_id"], m["version"], m["app_name"], m["chunk_index"], m["text"], m["page"],
        m["start_char"], m["end_char"], [str(p) for p in path] if isinstance(path, list) else [],
    )  # fmt: skip


def in_scopes(app_name: str, scopes: Sequence[Scope]) -> Any:
    s = t.sources.c
    return and_(
        s.app_name == app_name,
        or_(*(and_(s.scope_kind == x.kind, s.owner == x.owner, s.scope_key == x.key) for x in scopes)),
    )


def source_values(record: SourceRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "app_name": record.app_name,
        "scope_kind": record.scope.kind,
        "owner": record.scope.owner,
        "scope_key": record.scope.key,
        "name": record.name,
        "kind": record.kind,
        "user_id": record.user_id,
        "session_id": record.session_id,
        "uri": record.uri,
        "content_type": record.content_type,
        "title": record.title,
        "content_hash": record.content_hash,
        "size_bytes": record.size_bytes,
        "chunk_count": record.chunk_count,
        "chunker": dumps(record.chunker),
        "metadata": dumps(record.metadata),
        "version": record.version,
        "create_us": record.create_us,
        "update_us": record.update_us,
    }


@dataclass
class Replaced:
    source: SourceRecord
    created: bool
    chunks_removed: int
    unchanged: bool = False
