"""The memory store: memories (the source of truth), their change history, the vector outbox and the
lexical index, on SQLite or PostgreSQL through sessionkit_server.common.db.Database."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Row, and_, delete, func, insert, literal_column, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from sessionkit.errors import FailedPrecondition, NotFound, ServiceUnavailable, StateConflict
from sessionkit.jsonvalues import JsonValue, dumps, loads
from sessionkit_server.common.db import Database
from sessionkit_server.common.migrate import upgrader
from sessionkit_server.memory import tables as t
from sessionkit_server.memory.tokens import lexical_terms
from sessionkit_server.retrieval.vector_index import partition

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "sk_memory_alembic_version"
JsonObject = dict[str, JsonValue]

ADD, UPDATE, MERGE, DELETE = 1, 2, 3, 4

#: How long the response of an idempotent write is kept (and replayed).
IDEMPOTENCY_TTL_US = 24 * 3600 * 1_000_000
#: An ExtractMemories claim older than this whose call never finished (the server stopped): its
#: effects are unknown, so the key is refused rather than applied again.
CLAIM_LEASE_US = 15 * 60 * 1_000_000

R = TypeVar("R")
S = TypeVar("S")
T = TypeVar("T")


@dataclass(frozen=True)
class Idempotency(Generic[R]):
    """The idempotency key of a write, the RPC it belongs to, and how to serialize the write's response
    from its result. ``encode`` runs inside the write's transaction, so the response is stored
    atomically with the write it describes."""

    key: str
    method: str
    encode: Callable[[R], bytes]

    def before(self, convert: Callable[[S], R]) -> Idempotency[S]:
        """The same key for a step whose result ``convert`` turns into this write's result."""
        encode = self.encode
        return Idempotency(self.key, self.method, lambda value: encode(convert(value)))


class Replayed(Exception):
    """The write was already made with this idempotency key: ``response`` is its first response."""

    def __init__(self, response: bytes) -> None:
        super().__init__("idempotent replay")
        self.response = response


class _KeyTaken(Exception):
    """A concurrent write recorded the same key first (its transaction committed before ours)."""


def key_reused(key: str, method: str, used_by: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"idempotency key {key!r} was already used by {used_by}, not {method}; use a fresh key per write",
        reason="IDEMPOTENCY_KEY_REUSED",
        metadata={"idempotency_key": key, "method": used_by},
    )


@dataclass(frozen=True)
class Owner:
    """Who is asking: a session of a user of an app. It sees its own short-term memories and the
    user's long-term memories, nothing else."""

    app_name: str
    user_id: str
    session_id: str


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


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    memory_id: str
    app_name: str
    action: str  # "upsert" or "delete"
    #: Where the memory's vector lives; None for entries written before partitions (migration m0003).
    vector_collection: str | None


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


def _memory(row: Row[Any]) -> MemoryRecord:
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


def _change(row: Row[Any]) -> ChangeRecord:
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


__all__ = ["lexical_terms"]  # re-exported: the benchmarks import it from here


class MemoryStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def start(self) -> None:
        await self.db.migrate(upgrader(MIGRATIONS, VERSION_TABLE), VERSION_TABLE)

    # -- writes ---------------------------------------------------------------------------------------

    async def add(
        self,
        record: MemoryRecord,
        actor: str,
        window: int,
        idem: Idempotency[AddOutcome] | None = None,
    ) -> AddOutcome:
        """Insert ``record`` unless the same content is already in its scope (then return that one).
        A short-term insert evicts the session's oldest memories beyond ``window``."""
        return await self._write(
            record.app_name,
            record.user_id,
            idem,
            record.update_us,
            lambda conn: _insert(conn, record, actor, window),
        )

    async def add_many(
        self,
        owner: Owner,
        items: list[MemoryRecord | MergeInto],
        actor: str,
        window: int,
        now_us: int,
        idem: Idempotency[list[AddOutcome]] | None = None,
    ) -> list[AddOutcome]:
        """Each item in order, in one transaction (all or none are applied): a record is added as
        :meth:`add` does, a :class:`MergeInto` merged into its target (MERGE in its history)."""

        def run(conn: Connection) -> list[AddOutcome]:
            out: list[AddOutcome] = []
            for item in items:
                if isinstance(item, MergeInto):
                    merged = _merge(conn, owner, item, actor, now_us)
                    out.append(
                        AddOutcome(merged, merged=True)
                        if merged is not None
                        else _insert(conn, item.fallback, actor, window)
                    )
                else:
                    out.append(_insert(conn, item, actor, window))
            return out

        return await self._write(owner.app_name, owner.user_id, idem, now_us, run)

    async def update(
        self,
        owner: Owner,
        memory_id: str,
        now_us: int,
        actor: str,
        *,
        text_hash: tuple[str, str] | None = None,
        quality: float | None = None,
        metadata: JsonObject | None = None,
        expected_revision: int | None = None,
        operation: int = UPDATE,
        idem: Idempotency[MemoryRecord] | None = None,
    ) -> MemoryRecord:
        def run(conn: Connection) -> MemoryRecord:
            current = _locked(conn, owner, memory_id, now_us, expected_revision)
            new_text, new_hash = text_hash or (current.text, current.content_hash)
            new = MemoryRecord(
                **{
                    **current.__dict__,
                    "text": new_text,
                    "content_hash": new_hash,
                    "quality": current.quality if quality is None else quality,
                    "metadata": current.metadata if metadata is None else metadata,
                    "update_us": now_us,
                    "revision": current.revision + 1,
                }
            )
            conn.execute(
                update(t.memories)
                .where(t.memories.c.id == memory_id)
                .values(
                    text=new.text,
                    content_hash=new.content_hash,
                    quality=new.quality,
                    metadata=dumps(new.metadata),
                    update_us=now_us,
                    revision=new.revision,
                )
            )
            _log(
                conn,
                new,
                operation,
                actor,
                old=(current.text, current.quality, current.metadata),
                new=(new.text, new.quality, new.metadata),
            )
            if new.text != current.text:  # the vector depends on the text only
                _outbox(conn, new, "upsert")
            return new

        return await self._write(owner.app_name, owner.user_id, idem, now_us, run)

    async def delete(
        self,
        owner: Owner,
        memory_id: str,
        now_us: int,
        actor: str,
        expected_revision: int | None = None,
        idem: Idempotency[MemoryRecord] | None = None,
    ) -> MemoryRecord:
        def run(conn: Connection) -> MemoryRecord:
            current = _locked(conn, owner, memory_id, now_us, expected_revision)
            _delete(conn, current, actor, now_us)
            return current

        return await self._write(owner.app_name, owner.user_id, idem, now_us, run)

    async def clear(
        self,
        owner: Owner,
        memory_type: int | None,
        now_us: int,
        actor: str,
        idem: Idempotency[list[str]] | None = None,
        matches: Callable[[MemoryRecord], bool] | None = None,
    ) -> list[str]:
        """Delete the owner's memories of ``memory_type`` (all types when None) for which ``matches``
        is true (all when None); returns their ids."""

        def run(conn: Connection) -> list[str]:
            rows = conn.execute(select(t.memories).where(visible(owner, memory_type, now_us))).all()
            records = [_memory(row) for row in rows]
            gone = [r for r in records if matches is None or matches(r)]
            for record in gone:
                _delete(conn, record, actor, now_us)
            return [record.id for record in gone]

        return await self._write(owner.app_name, owner.user_id, idem, now_us, run)

    # -- idempotency ----------------------------------------------------------------------------------

    async def _write(
        self,
        app_name: str,
        user_id: str,
        idem: Idempotency[T] | None,
        now_us: int,
        run: Callable[[Connection], T],
    ) -> T:
        """Run the write ``run`` in one transaction; with a key, check the key first and store the
        response in the same transaction (a repeat raises :class:`Replayed` and writes nothing)."""
        if idem is None:
            return await self.db.write(run)

        def idempotent(conn: Connection) -> T:
            _check_key(conn, app_name, user_id, idem.key, idem.method, now_us)
            result = run(conn)
            _record_key(conn, app_name, user_id, idem.key, idem.method, idem.encode(result), now_us)
            return result

        try:
            return await self.db.write(idempotent)
        except _KeyTaken:
            # A concurrent write with this key committed first (ours was rolled back): replay it.
            await self.replay(app_name, user_id, idem.key, idem.method, now_us)
            raise

    async def remember(self, owner: Owner, idem: Idempotency[T], result: T, now_us: int) -> None:
        """Store the response of a write that changed nothing (an exact duplicate, a missing memory
        deleted with allow_missing), so its repeats answer the same. Raises :class:`Replayed` when the
        key was used meanwhile."""

        def run(conn: Connection) -> None:
            _check_key(conn, owner.app_name, owner.user_id, idem.key, idem.method, now_us)
            _record_key(
                conn, owner.app_name, owner.user_id, idem.key, idem.method, idem.encode(result), now_us
            )

        try:
            await self.db.write(run)
        except _KeyTaken:
            await self.replay(owner.app_name, owner.user_id, idem.key, idem.method, now_us)
            raise

    async def replay(self, app_name: str, user_id: str, key: str, method: str, now_us: int) -> None:
        """Raise :class:`Replayed` when ``key`` holds a response (a read; the fast path of a repeat)."""

        def run(conn: Connection) -> None:
            _check_key(conn, app_name, user_id, key, method, now_us, lock=False)

        await self.db.read(run)

    async def claim(self, owner: Owner, key: str, method: str, now_us: int) -> None:
        """Take ``key`` for a write made of several transactions (ExtractMemories): a pending record is
        stored, completed by :meth:`finish` or dropped by :meth:`release`. Raises :class:`Replayed` when
        the key already holds a response, ``ServiceUnavailable`` (retryable) while another call holds it."""

        def run(conn: Connection) -> None:
            _check_key(conn, owner.app_name, owner.user_id, key, method, now_us)
            _record_key(conn, owner.app_name, owner.user_id, key, method, None, now_us)

        try:
            await self.db.write(run)
        except _KeyTaken:
            await self.replay(owner.app_name, owner.user_id, key, method, now_us)
            raise

    async def finish(self, owner: Owner, key: str, response: bytes) -> None:
        i = t.idempotency.c

        def run(conn: Connection) -> None:
            conn.execute(
                update(t.idempotency)
                .where(i.app_name == owner.app_name, i.user_id == owner.user_id, i.key == key)
                .values(response=response)
            )

        await self.db.write(run)

    async def release(self, owner: Owner, key: str) -> None:
        """Drop a claim whose call failed before writing anything (a retry may then apply it)."""
        i = t.idempotency.c

        def run(conn: Connection) -> None:
            conn.execute(
                delete(t.idempotency).where(
                    i.app_name == owner.app_name,
                    i.user_id == owner.user_id,
                    i.key == key,
                    i.response.is_(None),
                )
            )

        await self.db.write(run)

    async def purge_idempotency(self, now_us: int) -> int:
        """Delete the idempotency records older than 24 hours; returns how many."""

        def run(conn: Connection) -> int:
            gone = conn.execute(
                delete(t.idempotency).where(t.idempotency.c.create_us < now_us - IDEMPOTENCY_TTL_US)
            )
            return int(gone.rowcount or 0)

        return await self.db.write(run)

    # -- reads ----------------------------------------------------------------------------------------

    async def get(self, owner: Owner, memory_id: str, now_us: int) -> MemoryRecord | None:
        def run(conn: Connection) -> MemoryRecord | None:
            query = select(t.memories).where(t.memories.c.id == memory_id, visible(owner, None, now_us))
            row = conn.execute(query).first()
            return None if row is None else _memory(row)

        return await self.db.read(run)

    async def by_hash(self, owner: Owner, memory_type: int, digest: str, now_us: int) -> MemoryRecord | None:
        def run(conn: Connection) -> MemoryRecord | None:
            m = t.memories.c
            query = select(t.memories).where(m.content_hash == digest, visible(owner, memory_type, now_us))
            row = conn.execute(query).first()
            return None if row is None else _memory(row)

        return await self.db.read(run)

    async def by_hashes(
        self, owner: Owner, digests: list[str], now_us: int
    ) -> dict[tuple[int, str], MemoryRecord]:
        """The owner's memories with these content hashes, by (memory type, hash)."""
        if not digests:
            return {}

        def run(conn: Connection) -> dict[tuple[int, str], MemoryRecord]:
            m = t.memories.c
            query = select(t.memories).where(m.content_hash.in_(digests), visible(owner, None, now_us))
            records = [_memory(row) for row in conn.execute(query).all()]
            return {(r.memory_type, r.content_hash): r for r in records}

        return await self.db.read(run)

    async def by_ids(self, owner: Owner, ids: list[str], now_us: int) -> dict[str, MemoryRecord]:
        if not ids:
            return {}

        def run(conn: Connection) -> dict[str, MemoryRecord]:
            # By the unique id only, then the owner check in Python: with the owner's columns in the
            # WHERE clause, SQLite without statistics picks the owner index and reads every row of the
            # user (24 ms at 100k memories, against 1.4 ms by id: docs/BENCHMARKS.md).
            query = select(t.memories).where(t.memories.c.id.in_(ids))
            records = (_memory(row) for row in conn.execute(query).all())
            return {r.id: r for r in records if is_visible(owner, None, now_us, r)}

        return await self.db.read(run)

    async def list_page(
        self, owner: Owner, memory_type: int | None, limit: int, after_pk: int, now_us: int
    ) -> list[tuple[int, MemoryRecord]]:
        def run(conn: Connection) -> list[tuple[int, MemoryRecord]]:
            m = t.memories.c
            query = (
                select(t.memories)
                .where(visible(owner, memory_type, now_us), m.pk > after_pk)
                .order_by(m.pk)
                .limit(limit)
            )
            return [(row._mapping["pk"], _memory(row)) for row in conn.execute(query).all()]

        return await self.db.read(run)

    async def changes(
        self, owner: Owner, memory_id: str, memory_type: int | None, limit: int, after_id: int
    ) -> list[ChangeRecord]:
        def run(conn: Connection) -> list[ChangeRecord]:
            c = t.changes.c
            short = and_(c.memory_type == t.SHORT, c.session_id == owner.session_id)
            long = c.memory_type == t.LONG
            kinds = short if memory_type == t.SHORT else long if memory_type == t.LONG else or_(short, long)
            query = select(t.changes).where(
                c.app_name == owner.app_name, c.user_id == owner.user_id, kinds, c.id > after_id
            )
            if memory_id:
                query = query.where(c.memory_id == memory_id)
            return [_change(row) for row in conn.execute(query.order_by(c.id).limit(limit)).all()]

        return await self.db.read(run)

    async def lexical(
        self,
        owner: Owner,
        memory_type: int | None,
        query: str,
        k: int,
        now_us: int,
        keep_stop_words: bool = False,
    ) -> list[tuple[str, float]]:
        """Best lexical matches among the rows ``owner`` may see: (id, score >= 0, higher is better).
        The query's stop words are dropped (``keep_stop_words``: kept, for comparisons)."""
        terms = lexical_terms(query, keep_stop_words=keep_stop_words)
        if not terms:
            return []

        def run(conn: Connection) -> list[tuple[str, float]]:
            m = t.memories.c
            if conn.dialect.name == "postgresql":
                tsv: Any = literal_column("sk_memories.tsv")
                tsquery = func.to_tsquery("english", " | ".join(terms))
                rank = func.ts_rank_cd(tsv, tsquery).label("rank")
                stmt = (
                    select(m.id, rank)
                    .where(visible(owner, memory_type, now_us), tsv.op("@@")(tsquery))
                    .order_by(rank.desc())
                    .limit(k)
                )
                return [(row[0], float(row[1])) for row in conn.execute(stmt).all()]
            # The owner's filter is inside the query, so the k best are the owner's k best (not the
            # best k * 4 of every user, then filtered). CROSS JOIN makes SQLite drive the join from
            # the FTS5 matches and look each row up by its primary key.
            kinds = {
                t.SHORT: "m.memory_type = 1 AND m.scope = :session",
                t.LONG: "m.memory_type = 2",
            }.get(memory_type or 0, "((m.memory_type = 1 AND m.scope = :session) OR m.memory_type = 2)")
            fts = text(
                "SELECT m.id, -bm25(sk_memories_fts) AS rank FROM sk_memories_fts "
                "CROSS JOIN sk_memories AS m ON m.pk = sk_memories_fts.rowid "
                "WHERE sk_memories_fts MATCH :match AND m.app_name = :app AND m.user_id = :user "
                f"AND {kinds} AND (m.expire_us IS NULL OR m.expire_us > :now) "
                "ORDER BY bm25(sk_memories_fts) LIMIT :limit"
            )
            params = {
                "match": " OR ".join(f'"{term}"' for term in terms),
                "app": owner.app_name,
                "user": owner.user_id,
                "session": owner.session_id,
                "now": now_us,
                "limit": k,
            }
            return [(row[0], float(row[1])) for row in conn.execute(fts, params).all()]

        return await self.db.read(run)

    # -- the vector outbox ----------------------------------------------------------------------------

    async def pending(self, limit: int = 256) -> list[OutboxEntry]:
        """The outbox, oldest first."""

        def run(conn: Connection) -> list[OutboxEntry]:
            o = t.outbox.c
            rows = conn.execute(
                select(o.id, o.memory_id, o.app_name, o.action, o.vector_collection)
                .order_by(o.id)
                .limit(limit)
            )
            return [OutboxEntry(r[0], r[1], r[2], r[3], r[4]) for r in rows.all()]

        return await self.db.read(run)

    async def rows_for_index(self, ids: list[str]) -> dict[str, MemoryRecord]:
        def run(conn: Connection) -> dict[str, MemoryRecord]:
            query = select(t.memories).where(t.memories.c.id.in_(ids))
            return {row._mapping["id"]: _memory(row) for row in conn.execute(query).all()}

        return await self.db.read(run)

    async def done(self, outbox_ids: list[int]) -> None:
        def run(conn: Connection) -> None:
            conn.execute(delete(t.outbox).where(t.outbox.c.id.in_(outbox_ids)))

        await self.db.write(run)

    async def apps(self) -> list[str]:
        """Every app with memories."""

        def run(conn: Connection) -> list[str]:
            return [r[0] for r in conn.execute(select(t.memories.c.app_name).distinct()).all()]

        return await self.db.read(run)

    async def all_rows(
        self, app_name: str | None, after_pk: int, limit: int
    ) -> list[tuple[int, MemoryRecord]]:
        def run(conn: Connection) -> list[tuple[int, MemoryRecord]]:
            m = t.memories.c
            query = select(t.memories).where(m.pk > after_pk)
            if app_name is not None:
                query = query.where(m.app_name == app_name)
            return [
                (r._mapping["pk"], _memory(r)) for r in conn.execute(query.order_by(m.pk).limit(limit)).all()
            ]

        return await self.db.read(run)


def _check_key(
    conn: Connection, app_name: str, user_id: str, key: str, method: str, now_us: int, lock: bool = True
) -> None:
    """Raise :class:`Replayed` when ``key`` was used by ``method`` within 24 hours. With ``lock``, first
    serialize every writer of this key: a PostgreSQL advisory lock held until the transaction ends
    (SQLite has one writer at a time), so a concurrent repeat waits, then replays."""
    if lock and conn.dialect.name == "postgresql":
        conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))"),
            {"name": f"sk_memory_idempotency\x1f{app_name}\x1f{user_id}\x1f{key}"},
        )
    i = t.idempotency.c
    row = conn.execute(
        select(i.method, i.response, i.create_us).where(
            i.app_name == app_name, i.user_id == user_id, i.key == key
        )
    ).first()
    if row is None or row.create_us < now_us - IDEMPOTENCY_TTL_US:
        return
    if row.method != method:
        raise key_reused(key, method, row.method)
    if row.response is not None:
        raise Replayed(bytes(row.response))
    if row.create_us < now_us - CLAIM_LEASE_US:
        raise FailedPrecondition(
            f"an earlier {method} call with idempotency key {key!r} never finished (the server stopped); "
            "what it applied is unknown, so it is not run again: check the memories and use a new key",
            reason="IDEMPOTENCY_KEY_ABANDONED",
            metadata={"idempotency_key": key},
        )
    raise ServiceUnavailable(
        f"a {method} call with idempotency key {key!r} is still running; retry to get its response",
        reason="IDEMPOTENCY_KEY_IN_PROGRESS",
        metadata={"idempotency_key": key},
        retry_after=1.0,
    )


def _record_key(
    conn: Connection, app_name: str, user_id: str, key: str, method: str, response: bytes | None, now_us: int
) -> None:
    i = t.idempotency.c
    # A record older than 24 hours is over: the key may be used again.
    conn.execute(
        delete(t.idempotency).where(
            i.app_name == app_name,
            i.user_id == user_id,
            i.key == key,
            i.create_us < now_us - IDEMPOTENCY_TTL_US,
        )
    )
    try:
        conn.execute(
            insert(t.idempotency).values(
                app_name=app_name,
                user_id=user_id,
                key=key,
                method=method,
                response=response,
                create_us=now_us,
            )
        )
    except IntegrityError as error:
        raise _KeyTaken from error


def _insert(conn: Connection, record: MemoryRecord, actor: str, window: int) -> AddOutcome:
    """Insert one memory (or find the same content in its scope), log it, queue its vector, and evict
    beyond the short-term window."""
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    values = _row_values(record)
    pk = conn.execute(
        dialect_insert(t.memories).values(**values).on_conflict_do_nothing().returning(t.memories.c.pk)
    ).scalar_one_or_none()
    m = t.memories.c
    if pk is None:
        existing = conn.execute(
            select(t.memories).where(
                m.app_name == record.app_name,
                m.user_id == record.user_id,
                m.memory_type == record.memory_type,
                m.scope == values["scope"],
                m.content_hash == record.content_hash,
            )
        ).one()
        return AddOutcome(_memory(existing), deduplicated=True)
    _log(conn, record, ADD, actor, new=(record.text, record.quality, record.metadata))
    _outbox(conn, record, "upsert")
    evicted: list[str] = []
    if record.memory_type == t.SHORT and window > 0:
        old = conn.execute(
            select(t.memories)
            .where(
                m.app_name == record.app_name,
                m.user_id == record.user_id,
                m.memory_type == t.SHORT,
                m.scope == record.session_id,
            )
            .order_by(m.create_us.desc(), m.pk.desc())
            .offset(window)
        ).all()
        for row in old:
            gone = _memory(row)
            _delete(conn, gone, actor, record.update_us)
            evicted.append(gone.id)
    return AddOutcome(record, evicted=evicted)


def _merge(conn: Connection, owner: Owner, item: MergeInto, actor: str, now_us: int) -> MemoryRecord | None:
    """Merge a batch item into its target (None when the target is gone)."""
    try:
        current = _locked(conn, owner, item.target, now_us, None)
    except NotFound:
        return None
    new = MemoryRecord(
        **{
            **current.__dict__,
            "quality": max(current.quality, item.quality),
            "metadata": {**item.metadata, **current.metadata},
            "update_us": now_us,
            "revision": current.revision + 1,
        }
    )
    conn.execute(
        update(t.memories)
        .where(t.memories.c.id == current.id)
        .values(quality=new.quality, metadata=dumps(new.metadata), update_us=now_us, revision=new.revision)
    )
    old = (current.text, current.quality, current.metadata)
    _log(conn, new, MERGE, actor, old=old, new=(new.text, new.quality, new.metadata))
    return new  # the text, hence the vector, is unchanged: nothing for the outbox


def _row_values(record: MemoryRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "app_name": record.app_name,
        "user_id": record.user_id,
        "session_id": record.session_id,
        "memory_type": record.memory_type,
        "scope": record.session_id if record.memory_type == t.SHORT else "",
        "text": record.text,
        "content_hash": record.content_hash,
        "quality": record.quality,
        "metadata": dumps(record.metadata),
        "create_us": record.create_us,
        "update_us": record.update_us,
        "expire_us": record.expire_us,
        "revision": record.revision,
    }


def _locked(
    conn: Connection, owner: Owner, memory_id: str, now_us: int, expected_revision: int | None
) -> MemoryRecord:
    query = (
        select(t.memories).where(t.memories.c.id == memory_id, visible(owner, None, now_us)).with_for_update()
    )
    row = conn.execute(query).first()
    if row is None:
        raise NotFound(
            f"memory {memory_id!r} not found", reason="MEMORY_NOT_FOUND", metadata={"memory_id": memory_id}
        )
    current = _memory(row)
    if expected_revision is not None and expected_revision != current.revision:
        raise StateConflict(
            f"memory {memory_id!r} is at revision {current.revision}, not the expected {expected_revision}",
            reason="MEMORY_CONFLICT",
            metadata={"current_revision": str(current.revision)},
        )
    return current


def _delete(conn: Connection, record: MemoryRecord, actor: str, now_us: int) -> None:
    conn.execute(delete(t.memories).where(t.memories.c.id == record.id))
    gone = MemoryRecord(**{**record.__dict__, "revision": record.revision + 1, "update_us": now_us})
    _log(conn, gone, DELETE, actor, old=(record.text, record.quality, record.metadata))
    _outbox(conn, gone, "delete")


Snapshot = tuple[str, float, JsonObject]


def _log(
    conn: Connection,
    record: MemoryRecord,
    operation: int,
    actor: str,
    old: Snapshot | None = None,
    new: Snapshot | None = None,
) -> None:
    conn.execute(
        insert(t.changes).values(
            memory_id=record.id,
            app_name=record.app_name,
            user_id=record.user_id,
            session_id=record.session_id,
            memory_type=record.memory_type,
            operation=operation,
            old_text=old[0] if old else None,
            new_text=new[0] if new else None,
            old_quality=old[1] if old else None,
            new_quality=new[1] if new else None,
            old_metadata=dumps(old[2]) if old else None,
            new_metadata=dumps(new[2]) if new else None,
            actor=actor,
            revision=record.revision,
            time_us=record.update_us,
        )
    )


def _outbox(conn: Connection, record: MemoryRecord, action: str) -> None:
    conn.execute(
        insert(t.outbox).values(
            memory_id=record.id,
            app_name=record.app_name,
            action=action,
            create_us=record.update_us,
            vector_collection=record.vector_collection,
        )
    )
