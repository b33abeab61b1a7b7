"""The memory service's records: a memory, a change of its history, the outcome of an add, and the
rules of who sees which memory and where its vector lives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row, and_, or_

from sessionkit.jsonvalues import JsonValue, loads
from sessionkit_server.common.identity import Owner
from sessionkit_server.memory import tables as t
from sessionkit_server.retrieval.vector_index import partition

JsonObject = dict[str, JsonValue]

ADD, UPDATE, MERGE, DELETE = 1, 2, 3, 4


@dataclass
class MemoryRecord:
    id: str
    app_name: str
    user_id: str
    session_id: str
    memory_type: int
    text: str
    content_hash: str
    quality: float
    metadata: JsonObject
    create_us: int
    update_us: int
    expire_us: int | None
    revision: int

    @property
    def bucket(self) -> str:
        """The vector index's scope tag: "long", or "short:<session_id>"."""
        return "long" if self.memory_type == t.LONG else f"short:{self.session_id}"

    @property
    def vector_collection(self) -> str:
        """The vector index collection (partition) holding this memory's vector."""
        return vector_collection(self.app_name, self.user_id, self.memory_type, self.session_id)


def app_collection(app_name: str) -> str:
    """The logical name of an app's memory vectors: the partitions below are named after it (and,
    before partitions, it was the app's one collection, filtered by user and bucket)."""
    return f"memories:{app_name}"


def vector_collection(app_name: str, user_id: str, memory_type: int, session_id: str) -> str:
    """Where a memory's vector lives: one collection per user for long-term memories and one per
    session for short-term ones, so a search queries only its owner's vectors, with no filter (Chroma's
    filtered query costs time linear in the collection: services/retrieval/vector_index.py)."""
    if memory_type == t.LONG:
        return partition(app_collection(app_name), user_id, "long")
    return partition(app_collection(app_name), user_id, "short", session_id)


def owner_collections(owner: Owner, memory_type: int | None) -> list[str]:
    """The collections a search by ``owner`` reads: the session's short-term and/or the user's
    long-term partition."""
    short = vector_collection(owner.app_name, owner.user_id, t.SHORT, owner.session_id)
    long = vector_collection(owner.app_name, owner.user_id, t.LONG, owner.session_id)
    return [short] if memory_type == t.SHORT else [long] if memory_type == t.LONG else [short, long]


@dataclass
class ChangeRecord:
    id: int
    memory_id: str
    memory_type: int
    operation: int
    old_text: str | None
    new_text: str | None
    old_quality: float | None
    new_quality: float | None
    old_metadata: JsonObject | None
    new_metadata: JsonObject | None
    actor: str
    session_id: str
    revision: int
    time_us: int


@dataclass
class AddOutcome:
    memory: MemoryRecord
    deduplicated: bool = False
    evicted: list[str] = field(default_factory=list)
    merged: bool = False


@dataclass(frozen=True)
class MergeInto:
    """A batch item merged into an existing near-duplicate (``target``): the higher quality is kept
    and the metadata combined, as a single add's merge. ``fallback`` is stored instead when the target
    was deleted meanwhile."""

    target: str
    quality: float
    metadata: JsonObject
    fallback: MemoryRecord


def memory_of(row: Row[Any]) -> MemoryRecord:
    m = row._mapping
    return MemoryRecord(
        m["id"],
        m["app_name"],
        m["user_id"],
        m["session_id"],
        m["memory_type"],
        m["text"],
        m["content_hash"],
        m["quality"],
        loads(m["metadata"]),
        m["create_us"],
        m["update_us"],
        m["expire_us"],
        m["revision"],
    )


def change_of(row: Row[Any]) -> ChangeRecord:
    m = row._mapping

    def obj(name: str) -> JsonObject | None:
        return None if m[name] is None else loads(m[name])

    return ChangeRecord(
        m["id"],
        m["memory_id"],
        m["memory_type"],
        m["operation"],
        m["old_text"],
        m["new_text"],
        m["old_quality"],
        m["new_quality"],
        obj("old_metadata"),
        obj("new_metadata"),
        m["actor"],
        m["session_id"],
        m["revision"],
        m["time_us"],
    )


def visible(owner: Owner, memory_type: int | None, now_us: int) -> Any:
    """The rows ``owner`` may see: its session's short-term memories and its user's long-term ones."""
    m = t.memories.c
    short = and_(m.memory_type == t.SHORT, m.scope == owner.session_id)
    long = m.memory_type == t.LONG
    kinds = short if memory_type == t.SHORT else long if memory_type == t.LONG else or_(short, long)
    return and_(
        m.app_name == owner.app_name,
        m.user_id == owner.user_id,
        kinds,
        or_(m.expire_us.is_(None), m.expire_us > now_us),
    )


def is_visible(owner: Owner, memory_type: int | None, now_us: int, record: MemoryRecord) -> bool:
    """:func:`visible` for a row already read (by its unique id: see :meth:`MemoryStore.by_ids`)."""
    if record.app_name != owner.app_name or record.user_id != owner.user_id:
        return False
    if record.expire_us is not None and record.expire_us <= now_us:
        return False
    short = record.memory_type == t.SHORT and record.session_id == owner.session_id
    long = record.memory_type == t.LONG
    return short if memory_type == t.SHORT else long if memory_type == t.LONG else short or long
