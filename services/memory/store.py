"""The memory store: memories (the source of truth), their change history, the vector outbox and the
lexical index, on SQLite or PostgreSQL through sessionkit_server.common.db.Database. The records and
visibility rules are in records.py, the statements of each write in row_writes.py, idempotency keys in
the shared ledger (sessionkit_server.common.idempotency)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, and_, delete, or_, select, text, update

from sessionkit.jsonvalues import dumps
from sessionkit_server.common.db import Database
from sessionkit_server.common.idempotency import Idempotency, IdempotencyLedger, KeySpace
from sessionkit_server.common.identity import Owner
from sessionkit_server.common.migrate import upgrader
from sessionkit_server.common.vector_outbox import IndexRow, PendingEntry
from sessionkit_server.memory import tables as t
from sessionkit_server.memory.records import (
    UPDATE,
    AddOutcome,
    ChangeRecord,
    JsonObject,
    MemoryRecord,
    MergeInto,
    app_collection,
    change_of,
    is_visible,
    memory_of,
    vector_collection,
    visible,
)
from sessionkit_server.memory.row_writes import (
    delete_memory,
    insert_memory,
    locked,
    log_change,
    merge_into,
    queue_vector,
)
from sessionkit_server.retrieval import bm25
from sessionkit_server.retrieval.words import fts5_match, lexical_terms

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "sk_memory_alembic_version"
#: An ExtractMemories claim older than this whose call never finished is refused (IDEMPOTENCY_KEY_ABANDONED).
CLAIM_LEASE_US = 15 * 60 * 1_000_000
#: bm25's weight of a memory's lexical context (the previous memory of its session) next to its own
#: text (1.0). PostgreSQL's equivalent is the context's tsvector weight 'B' (migration m0005).
CONTEXT_WEIGHT = 1.0

T = TypeVar("T")

# Re-exported: the benchmarks and tests import these from here.
__all__ = ["MemoryRecord", "MemoryStore", "Owner", "app_collection", "lexical_terms", "vector_collection"]


def _space(owner: Owner) -> KeySpace:
    """Memory keys belong to the user (a repeat from another session of the user replays)."""
    return KeySpace(owner.app_name, owner.user_id)


def index_row(record: MemoryRecord) -> IndexRow:
    """What the index stores next to a vector: who it belongs to, for inspecting the index (queries
    need no filter: each partition holds one owner's vectors). Only what never changes, so a memory's
    vector is rewritten only when its text changes."""
    metadata: dict[str, str | int | float | bool] = {
        "user_id": record.user_id,
        "bucket": record.bucket,
        "memory_type": record.memory_type,
    }
    return IndexRow(record.id, record.text, record.vector_collection, metadata, record.content_hash)


class MemoryStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        #: An ExtractMemories claim older than 15 minutes whose call never finished (the server
        #: stopped) is refused: its effects are unknown.
        self.keys = IdempotencyLedger(db, t.idempotency, claim_lease_us=CLAIM_LEASE_US)

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
            lambda conn: insert_memory(conn, record, actor, window),
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
                    merged = merge_into(conn, owner, item, actor, now_us)
                    out.append(
                        AddOutcome(merged, merged=True)
                        if merged is not None
                        else insert_memory(conn, item.fallback, actor, window)
                    )
                else:
                    out.append(insert_memory(conn, item, actor, window))
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
            current = locked(conn, owner, memory_id, now_us, expected_revision)
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
            log_change(
                conn,
                new,
                operation,
                actor,
                old=(current.text, current.quality, current.metadata),
                new=(new.text, new.quality, new.metadata),
            )
            if new.text != current.text:  # the vector depends on the text only
                queue_vector(conn, new, "upsert")
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
            current = locked(conn, owner, memory_id, now_us, expected_revision)
            delete_memory(conn, current, actor, now_us)
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
            records = [memory_of(row) for row in rows]
            gone = [r for r in records if matches is None or matches(r)]
            for record in gone:
                delete_memory(conn, record, actor, now_us)
            return [record.id for record in gone]

        return await self._write(owner.app_name, owner.user_id, idem, now_us, run)

    # -- idempotency (the shared ledger: sessionkit_server.common.idempotency) -------------------------

    async def _write(
        self,
        app_name: str,
        user_id: str,
        idem: Idempotency[T] | None,
        now_us: int,
        run: Callable[[Connection], T],
    ) -> T:
        """Run the write ``run`` in one transaction, with its key checked and its response stored in
        that transaction (a repeat raises :class:`Replayed` and writes nothing)."""
        return await self.keys.write(KeySpace(app_name, user_id), idem, now_us, run)

    async def remember(self, owner: Owner, idem: Idempotency[T], result: T, now_us: int) -> None:
        """Store the response of a write that changed nothing (an exact duplicate, a missing memory
        deleted with allow_missing), so its repeats answer the same."""
        await self.keys.remember(_space(owner), idem, result, now_us)

    async def replay(self, app_name: str, user_id: str, key: str, method: str, now_us: int) -> None:
        """Raise :class:`Replayed` when ``key`` holds a response (a read; the fast path of a repeat)."""
        await self.keys.replay(KeySpace(app_name, user_id), key, method, now_us)

    async def claim(self, owner: Owner, key: str, method: str, now_us: int) -> None:
        """Take ``key`` for ExtractMemories (several transactions): completed by :meth:`finish` or
        dropped by :meth:`release`."""
        await self.keys.claim(_space(owner), key, method, now_us)

    async def finish(self, owner: Owner, key: str, response: bytes) -> None:
        await self.keys.complete(_space(owner), key, response)

    async def release(self, owner: Owner, key: str) -> None:
        """Drop a claim whose call failed before writing anything (a retry may then apply it)."""
        await self.keys.release(_space(owner), key)

    async def purge_idempotency(self, now_us: int) -> int:
        """Delete the idempotency records older than 24 hours; returns how many."""
        return await self.keys.purge(now_us)

    # -- reads ----------------------------------------------------------------------------------------

    async def get(self, owner: Owner, memory_id: str, now_us: int) -> MemoryRecord | None:
        def run(conn: Connection) -> MemoryRecord | None:
            query = select(t.memories).where(t.memories.c.id == memory_id, visible(owner, None, now_us))
            row = conn.execute(query).first()
            return None if row is None else memory_of(row)

        return await self.db.read(run)

    async def by_hash(self, owner: Owner, memory_type: int, digest: str, now_us: int) -> MemoryRecord | None:
        def run(conn: Connection) -> MemoryRecord | None:
            m = t.memories.c
            query = select(t.memories).where(m.content_hash == digest, visible(owner, memory_type, now_us))
            row = conn.execute(query).first()
            return None if row is None else memory_of(row)

        return await self.db.read(run)

    async def by_hash_many(
        self, keys: list[tuple[Owner, int, str]], now_us: int
    ) -> list[MemoryRecord | None]:
        """:meth:`by_hash` for each (owner, memory type, hash), in order, in one read transaction (the
        same-content checks of concurrent adds: one hop to a reader thread instead of one each)."""

        def run(conn: Connection) -> list[MemoryRecord | None]:
            m = t.memories.c
            found: list[MemoryRecord | None] = []
            for owner, memory_type, digest in keys:
                where = (m.content_hash == digest, visible(owner, memory_type, now_us))
                row = conn.execute(select(t.memories).where(*where)).first()
                found.append(None if row is None else memory_of(row))
            return found

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
            records = [memory_of(row) for row in conn.execute(query).all()]
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
            records = (memory_of(row) for row in conn.execute(query).all())
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
            return [(row._mapping["pk"], memory_of(row)) for row in conn.execute(query).all()]

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
            return [change_of(row) for row in conn.execute(query.order_by(c.id).limit(limit)).all()]

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
            kinds = {
                t.SHORT: "m.memory_type = 1 AND m.scope = :session",
                t.LONG: "m.memory_type = 2",
            }.get(memory_type or 0, "((m.memory_type = 1 AND m.scope = :session) OR m.memory_type = 2)")
            params: dict[str, Any] = {
                "app": owner.app_name,
                "user": owner.user_id,
                "session": owner.session_id,
                "now": now_us,
                "limit": k,
                "context_weight": CONTEXT_WEIGHT,
            }
            if conn.dialect.name == "postgresql":
                # BM25 (sessionkit_server.retrieval.bm25): the candidates are the owner's visible rows
                # holding any query lexeme (GIN index), N and the average length the user's
                # statistics row (migration m0006): another user's rows neither rank nor weigh here.
                sql = text(
                    "WITH stats AS (SELECT greatest(coalesce(max(docs), 0), 1)::float8 AS n, "
                    "greatest(coalesce(max(tokens), 0), 1)::float8 / greatest(coalesce(max(docs), 0), 1) "
                    "AS avglen FROM sk_memory_lexical_stats WHERE app_name = :app AND user_id = :user), "
                    "cand AS (SELECT m.id, m.tsv, m.tsv_len FROM sk_memories AS m "
                    f"WHERE m.tsv @@ {bm25.TSQUERY} AND m.app_name = :app AND m.user_id = :user "
                    f"AND {kinds} AND (m.expire_us IS NULL OR m.expire_us > :now))" + bm25.SCORE_SQL
                )
                params.update(bm25.query_params(terms, CONTEXT_WEIGHT))
                return [(row[0], float(row[1])) for row in conn.execute(sql, params).all()]
            # The owner's filter is inside the query, so the k best are the owner's k best (not the
            # best k * 4 of every user, then filtered). CROSS JOIN makes SQLite drive the join from
            # the FTS5 matches and look each row up by its primary key.
            fts = text(
                "SELECT m.id, -bm25(sk_memories_fts, 1.0, :context_weight) AS rank FROM sk_memories_fts "
                "CROSS JOIN sk_memories AS m ON m.pk = sk_memories_fts.rowid "
                "WHERE sk_memories_fts MATCH :match AND m.app_name = :app AND m.user_id = :user "
                f"AND {kinds} AND (m.expire_us IS NULL OR m.expire_us > :now) "
                "ORDER BY bm25(sk_memories_fts, 1.0, :context_weight) LIMIT :limit"
            )
            params["match"] = fts5_match(query, keep_stop_words)
            return [(row[0], float(row[1])) for row in conn.execute(fts, params).all()]

        return await self.db.read(run)

    # -- the vector outbox (sessionkit_server.common.vector_outbox reads it through these) -------------

    async def pending(self, limit: int = 256) -> list[PendingEntry]:
        """The outbox, oldest first."""

        def run(conn: Connection) -> list[PendingEntry]:
            o = t.outbox.c
            rows = conn.execute(
                select(o.id, o.memory_id, o.app_name, o.vector_collection).order_by(o.id).limit(limit)
            )
            return [PendingEntry(r[0], r[1], r[2], r[3]) for r in rows.all()]

        return await self.db.read(run)

    async def rows_for_index(self, ids: list[str]) -> dict[str, MemoryRecord]:
        def run(conn: Connection) -> dict[str, MemoryRecord]:
            query = select(t.memories).where(t.memories.c.id.in_(ids))
            return {row._mapping["id"]: memory_of(row) for row in conn.execute(query).all()}

        return await self.db.read(run)

    async def index_rows(self, ids: list[str]) -> dict[str, IndexRow]:
        return {i: index_row(r) for i, r in (await self.rows_for_index(ids)).items()}

    async def index_rows_after(
        self, app_name: str | None, after_pk: int, limit: int
    ) -> list[tuple[int, IndexRow]]:
        return [(pk, index_row(r)) for pk, r in await self.all_rows(app_name, after_pk, limit)]

    async def done_upserts(self, memory_ids: list[str]) -> None:
        """Delete the "upsert" outbox entries of these memories (their vectors were written behind
        the reply: VectorOutbox.write_behind). A "delete" entry queued meanwhile stays and is applied."""
        if not memory_ids:
            return

        def run(conn: Connection) -> None:
            o = t.outbox.c
            conn.execute(delete(t.outbox).where(o.action == "upsert", o.memory_id.in_(memory_ids)))

        await self.db.write(run)

    async def done(self, entry_ids: list[int]) -> None:
        def run(conn: Connection) -> None:
            conn.execute(delete(t.outbox).where(t.outbox.c.id.in_(entry_ids)))

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
                (r._mapping["pk"], memory_of(r))
                for r in conn.execute(query.order_by(m.pk).limit(limit)).all()
            ]

        return await self.db.read(run)
