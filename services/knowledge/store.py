"""The knowledge store: sources and their chunks (the source of truth), the vector outbox and the
lexical index, on SQLite or PostgreSQL through sessionkit_server.common.db.Database.

A source's content is replaced in one transaction: its new chunks are inserted, its row switched to
the new version, its old chunks deleted (with "delete" outbox entries for their vectors). Reads join
chunks to their source's current version, so a search sees the old chunks or the new ones, never a
mix."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, and_, delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from sessionkit.jsonvalues import dumps
from sessionkit_server.common.db import Database
from sessionkit_server.common.idempotency import Idempotency, IdempotencyLedger, KeySpace
from sessionkit_server.common.migrate import upgrader
from sessionkit_server.common.timestamps import now_us
from sessionkit_server.common.vector_outbox import IndexRow, PendingEntry
from sessionkit_server.knowledge import tables as t
from sessionkit_server.knowledge.records import (
    ChunkRecord,
    Replaced,
    Scope,
    SourceRecord,
    app_collection,
    chunk_of,
    in_scopes,
    source_of,
    source_values,
    vector_collection,
)
from sessionkit_server.retrieval import bm25
from sessionkit_server.retrieval.words import fts5_match, lexical_terms

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "sk_knowledge_alembic_version"
T = TypeVar("T")


__all__ = ["ChunkRecord", "KnowledgeStore", "Scope", "SourceRecord", "app_collection", "vector_collection"]


def index_row(chunk: ChunkRecord, scope: Scope) -> IndexRow:
    """A chunk as the index holds it (a chunk's text never changes under its id: no fingerprint)."""
    return IndexRow(
        chunk.id,
        chunk.text,
        vector_collection(chunk.app_name, scope),
        {"bucket": scope.bucket, "source_id": chunk.source_id},
    )


class KnowledgeStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.keys = IdempotencyLedger(db, t.idempotency)

    async def start(self) -> None:
        await self.db.migrate(upgrader(MIGRATIONS, VERSION_TABLE), VERSION_TABLE)

    # -- writes ---------------------------------------------------------------------------------------

    async def put(
        self,
        record: SourceRecord,
        chunks: list[ChunkRecord],
        force: bool = False,
        idem: Idempotency[Replaced] | None = None,
        user_id: str = "",
    ) -> Replaced:
        """Add ``record`` with ``chunks``, or replace the content of the source of the same name in its
        scope (keeping its id and create time), in one transaction. With ``idem`` (the key of
        ``user_id``), the response is recorded in that transaction; a repeat raises ``Replayed``."""

        def run(conn: Connection) -> Replaced:
            s = t.sources.c
            row = conn.execute(
                select(t.sources)
                .where(
                    s.app_name == record.app_name,
                    s.scope_kind == record.scope.kind,
                    s.owner == record.scope.owner,
                    s.scope_key == record.scope.key,
                    s.name == record.name,
                )
                .with_for_update()
            ).first()
            removed = 0
            if row is None:
                new = record
                new.version = 1
                conn.execute(insert(t.sources).values(**source_values(new)))
            else:
                old = source_of(row)
                if not force and (old.content_hash, old.chunker, old.metadata) == (
                    record.content_hash,
                    record.chunker,
                    record.metadata,
                ):
                    # A concurrent add of the same content got there first: nothing to change.
                    return Replaced(old, False, 0, unchanged=True)
                new = SourceRecord(
                    **{
                        **record.__dict__,
                        "id": old.id,
                        "create_us": old.create_us,
                        "version": old.version + 1,
                    }
                )
                removed = _delete_chunks(conn, old.id, vector_collection(old.app_name, old.scope))
                conn.execute(update(t.sources).where(s.id == old.id).values(**source_values(new)))
            for chunk in chunks:
                chunk.source_id, chunk.version = new.id, new.version
            if chunks:
                conn.execute(
                    insert(t.chunks),
                    [
                        {
                            "id": c.id,
                            "source_id": c.source_id,
                            "version": c.version,
                            "app_name": c.app_name,
                            "chunk_index": c.chunk_index,
                            "text": c.text,
                            "page": c.page,
                            "start_char": c.start_char,
                            "end_char": c.end_char,
                            "heading_path": dumps(list(c.heading_path)),
                        }
                        for c in chunks
                    ],
                )
                coll = vector_collection(new.app_name, new.scope)
                conn.execute(
                    insert(t.outbox),
                    [
                        {
                            "chunk_id": c.id,
                            "app_name": c.app_name,
                            "action": "upsert",
                            "vector_collection": coll,
                        }
                        for c in chunks
                    ],
                )
            if conn.dialect.name == "postgresql":
                # BM25's statistics of the source's current version (migration k0005), in this
                # transaction: a search sums them over the scopes it searches.
                conn.execute(
                    text(
                        "UPDATE sk_knowledge_sources SET (lexical_chunks, lexical_tokens) = "
                        "(SELECT count(*), coalesce(sum(tsv_len), 0) FROM sk_knowledge_chunks "
                        "WHERE source_id = :id AND version = :version) WHERE id = :id"
                    ),
                    {"id": new.id, "version": new.version},
                )
            return Replaced(new, row is None, removed)

        try:
            return await self._write(record.app_name, user_id, idem, run)
        except IntegrityError:
            # A concurrent add of the same name inserted it first: replace that one.
            return await self._write(record.app_name, user_id, idem, run)

    async def delete(
        self,
        app_name: str,
        source_id: str,
        scopes: Sequence[Scope],
        idem: Idempotency[int | None] | None = None,
        user_id: str = "",
    ) -> int | None:
        """Delete a visible source and its chunks: the chunk count, None when there is no such source."""

        def run(conn: Connection) -> int | None:
            s = t.sources.c
            found = conn.execute(
                select(s.scope_kind, s.owner, s.scope_key)
                .where(s.id == source_id, in_scopes(app_name, scopes))
                .with_for_update()
            ).first()
            if found is None:
                return None
            scope = Scope(found.scope_kind, found.owner, found.scope_key)
            removed = _delete_chunks(conn, source_id, vector_collection(app_name, scope))
            conn.execute(delete(t.sources).where(s.id == source_id))
            return removed

        return await self._write(app_name, user_id, idem, run)

    async def clear(
        self,
        app_name: str,
        scope: Scope,
        idem: Idempotency[tuple[int, int]] | None = None,
        user_id: str = "",
    ) -> tuple[int, int]:
        def run(conn: Connection) -> tuple[int, int]:
            s = t.sources.c
            ids = [r[0] for r in conn.execute(select(s.id).where(in_scopes(app_name, [scope]))).all()]
            coll = vector_collection(app_name, scope)
            removed = sum(_delete_chunks(conn, i, coll) for i in ids)
            if ids:
                conn.execute(delete(t.sources).where(s.id.in_(ids)))
            return len(ids), removed

        return await self._write(app_name, user_id, idem, run)

    # -- idempotency (the shared ledger: sessionkit_server.common.idempotency) -------------------------

    async def _write(
        self, app_name: str, user_id: str, idem: Idempotency[T] | None, run: Callable[[Connection], T]
    ) -> T:
        """Run the write ``run`` in one transaction, with its key checked and its response recorded in
        that transaction (a repeat raises ``Replayed`` and writes nothing)."""
        return await self.keys.write(KeySpace(app_name, user_id), idem, now_us(), run)

    async def remember(self, app_name: str, user_id: str, idem: Idempotency[T], result: T) -> None:
        """Record the response of a write that changed nothing (unchanged content, a missing source
        deleted with allow_missing), so a repeat answers the same."""
        await self.keys.remember(KeySpace(app_name, user_id), idem, result, now_us())

    async def replay(self, app_name: str, user_id: str, key: str, method: str) -> None:
        """Raise ``Replayed`` when ``key`` holds a response (a read: the fast path of a repeat)."""
        await self.keys.replay(KeySpace(app_name, user_id), key, method, now_us())

    async def purge_idempotency(self, now: int) -> int:
        """Delete the idempotency records older than 24 hours; returns how many."""
        return await self.keys.purge(now)

    # -- reads ----------------------------------------------------------------------------------------

    async def by_name(self, app_name: str, scope: Scope, name: str) -> SourceRecord | None:
        def run(conn: Connection) -> SourceRecord | None:
            row = conn.execute(
                select(t.sources).where(in_scopes(app_name, [scope]), t.sources.c.name == name)
            ).first()
            return None if row is None else source_of(row)

        return await self.db.read(run)

    async def by_id(self, app_name: str, source_id: str, scopes: Sequence[Scope]) -> SourceRecord | None:
        def run(conn: Connection) -> SourceRecord | None:
            row = conn.execute(
                select(t.sources).where(t.sources.c.id == source_id, in_scopes(app_name, scopes))
            ).first()
            return None if row is None else source_of(row)

        return await self.db.read(run)

    async def list_sources(
        self, app_name: str, scopes: Sequence[Scope], kind: int, offset: int, limit: int
    ) -> list[SourceRecord]:
        def run(conn: Connection) -> list[SourceRecord]:
            s = t.sources.c
            query = select(t.sources).where(in_scopes(app_name, scopes))
            if kind:
                query = query.where(s.kind == kind)
            query = query.order_by(s.scope_kind, s.scope_key, s.name, s.pk).offset(offset).limit(limit)
            return [source_of(r) for r in conn.execute(query).all()]

        return await self.db.read(run)

    async def current_chunks(
        self, app_name: str, scopes: Sequence[Scope], chunk_ids: list[str]
    ) -> dict[str, tuple[ChunkRecord, SourceRecord]]:
        """The chunks among ``chunk_ids`` that belong to the current version of a visible source."""
        if not chunk_ids:
            return {}

        def run(conn: Connection) -> dict[str, tuple[ChunkRecord, SourceRecord]]:
            c = t.chunks.c
            chunks = [chunk_of(r) for r in conn.execute(select(t.chunks).where(c.id.in_(chunk_ids))).all()]
            return _current(conn, app_name, scopes, chunks)

        return await self.db.read(run)

    async def lexical(
        self, app_name: str, scopes: Sequence[Scope], query: str, k: int
    ) -> list[tuple[str, float]]:
        """Best lexical matches among the current chunks of visible sources: (chunk id, score)."""
        terms = lexical_terms(query)
        if not terms:
            return []

        def run(conn: Connection) -> list[tuple[str, float]]:
            c, s = t.chunks.c, t.sources.c
            visible = and_(s.id == c.source_id, s.version == c.version)
            if conn.dialect.name == "postgresql":
                return _bm25(conn, app_name, scopes, terms, k)
            match = fts5_match(query)
            fts = text(
                "SELECT rowid AS pk, -bm25(sk_knowledge_chunks_fts) AS rank "
                "FROM sk_knowledge_chunks_fts WHERE sk_knowledge_chunks_fts MATCH :match "
                "ORDER BY bm25(sk_knowledge_chunks_fts) LIMIT :limit"
            ).columns()
            wanted = {(x.kind, x.owner, x.key) for x in scopes}
            # FTS5 ranks every app's and scope's chunks, and old versions': candidates beyond k are
            # fetched for the filter below. First 2 x k: when k of them are visible they are the
            # best k visible ones among any more candidates, so the answer is the one 8 x k gives;
            # otherwise 8 x k, as before. With k = 120 (a search of 30), sorting and joining 960
            # candidates was a large part of the lexical search at 100k chunks (docs/BENCHMARKS.md).
            found: list[tuple[str, float]] = []
            for limit in (k * 2, k * 8):
                hits = {
                    row[0]: float(row[1]) for row in conn.execute(fts, {"match": match, "limit": limit}).all()
                }
                if not hits:
                    return []
                # One join on keys (chunk pk, source id) and only the columns the filter needs: with
                # one or two chunks per source the hits come from hundreds of sources, and reading
                # each whole source row (and decoding its JSON) took most of the search (11 vs 3.5 ms
                # at 10k chunks from 5,000 files against 10 files; docs/BENCHMARKS.md). The scope
                # test is done here, not in SQL, for the plan reason given at _visible_sources.
                rows = conn.execute(
                    select(c.pk, c.id, s.app_name, s.scope_kind, s.owner, s.scope_key)
                    .join(t.sources, visible)
                    .where(c.pk.in_(list(hits)))
                ).all()
                found = [
                    (row[1], hits[row[0]])
                    for row in rows
                    if row[2] == app_name and (row[3], row[4], row[5]) in wanted
                ]
                if len(found) >= k or len(hits) < limit:  # enough, or no more candidates
                    break
            return sorted(found, key=lambda item: -item[1])[:k]

        return await self.db.read(run)

    # -- the vector outbox (sessionkit_server.common.vector_outbox reads it through these) -------------

    async def pending(self, limit: int = 512) -> list[PendingEntry]:
        """Outbox entries, oldest first."""

        def run(conn: Connection) -> list[PendingEntry]:
            o = t.outbox.c
            query = select(o.id, o.chunk_id, o.app_name, o.vector_collection).order_by(o.id).limit(limit)
            return [PendingEntry(r[0], r[1], r[2], r[3]) for r in conn.execute(query).all()]

        return await self.db.read(run)

    async def chunks_for_index(self, ids: list[str]) -> dict[str, tuple[ChunkRecord, Scope]]:
        def run(conn: Connection) -> dict[str, tuple[ChunkRecord, Scope]]:
            c, s = t.chunks.c, t.sources.c
            query = (
                select(t.chunks, s.scope_kind, s.owner, s.scope_key)
                .join(t.sources, s.id == c.source_id)
                .where(c.id.in_(ids))
            )
            out: dict[str, tuple[ChunkRecord, Scope]] = {}
            for row in conn.execute(query).all():
                m = row._mapping
                out[m["id"]] = (chunk_of(row), Scope(m["scope_kind"], m["owner"], m["scope_key"]))
            return out

        return await self.db.read(run)

    async def index_rows(self, ids: list[str]) -> dict[str, IndexRow]:
        return {
            i: index_row(chunk, scope) for i, (chunk, scope) in (await self.chunks_for_index(ids)).items()
        }

    async def index_rows_after(
        self, app_name: str | None, after_pk: int, limit: int
    ) -> list[tuple[int, IndexRow]]:
        return [
            (pk, index_row(chunk, scope))
            for pk, chunk, scope in await self.chunks_after(app_name, after_pk, limit)
        ]

    async def apps(self) -> list[str]:
        """Every app_name that has knowledge sources."""

        def run(conn: Connection) -> list[str]:
            return [r[0] for r in conn.execute(select(t.sources.c.app_name).distinct()).all()]

        return await self.db.read(run)

    async def chunks_after(
        self, app_name: str | None, after_pk: int, limit: int
    ) -> list[tuple[int, ChunkRecord, Scope]]:
        """Up to ``limit`` chunks of the current version of their source (of one app, or of every
        app when None) with a primary key over ``after_pk``, in key order: (pk, chunk, scope)."""

        def run(conn: Connection) -> list[tuple[int, ChunkRecord, Scope]]:
            c, s = t.chunks.c, t.sources.c
            query = (
                select(t.chunks, s.scope_kind, s.owner, s.scope_key)
                .join(t.sources, and_(s.id == c.source_id, s.version == c.version))
                .where(c.pk > after_pk)
            )
            if app_name is not None:
                query = query.where(c.app_name == app_name)
            out: list[tuple[int, ChunkRecord, Scope]] = []
            for row in conn.execute(query.order_by(c.pk).limit(limit)).all():
                m = row._mapping
                out.append((m["pk"], chunk_of(row), Scope(m["scope_kind"], m["owner"], m["scope_key"])))
            return out

        return await self.db.read(run)

    async def done_upserts(self, chunk_ids: list[str]) -> None:
        """Delete the "upsert" outbox entries of these chunks (their vectors were written behind the
        reply: VectorOutbox.write_behind). A "delete" entry queued meanwhile stays and is applied."""
        if not chunk_ids:
            return

        def run(conn: Connection) -> None:
            o = t.outbox.c
            conn.execute(delete(t.outbox).where(o.action == "upsert", o.chunk_id.in_(chunk_ids)))

        await self.db.write(run)

    async def done(self, entry_ids: list[int]) -> None:
        def run(conn: Connection) -> None:
            conn.execute(delete(t.outbox).where(t.outbox.c.id.in_(entry_ids)))

        await self.db.write(run)


def _bm25(
    conn: Connection, app_name: str, scopes: Sequence[Scope], terms: list[str], k: int
) -> list[tuple[str, float]]:
    """PostgreSQL's BM25 (sessionkit_server.retrieval.bm25) over the current chunks of the sources in
    ``scopes``: N and the average length summed over those sources (migration k0005), document
    frequencies counted among the candidates, so no other scope's chunk is ranked or weighs."""
    params: dict[str, Any] = {"app": app_name, "limit": k, **bm25.query_params(terms)}
    alternatives = []
    for n, scope in enumerate(scopes):
        alternatives.append(f"(s.scope_kind = :kind{n} AND s.owner = :owner{n} AND s.scope_key = :key{n})")
        params.update({f"kind{n}": scope.kind, f"owner{n}": scope.owner, f"key{n}": scope.key})
    if not alternatives:
        return []
    in_scopes_sql = f"s.app_name = :app AND ({' OR '.join(alternatives)})"
    sql = text(
        "WITH stats AS (SELECT greatest(coalesce(sum(s.lexical_chunks), 0), 1)::float8 AS n, "
        "greatest(coalesce(sum(s.lexical_tokens), 0), 1)::float8 "
        "/ greatest(coalesce(sum(s.lexical_chunks), 0), 1) AS avglen "
        f"FROM sk_knowledge_sources AS s WHERE {in_scopes_sql}), "
        "cand AS (SELECT c.id, c.tsv, c.tsv_len FROM sk_knowledge_chunks AS c "
        "JOIN sk_knowledge_sources AS s ON s.id = c.source_id AND s.version = c.version "
        f"WHERE c.tsv @@ {bm25.TSQUERY} AND {in_scopes_sql})" + bm25.SCORE_SQL
    )
    return [(row[0], float(row[1])) for row in conn.execute(sql, params).all()]


def _delete_chunks(conn: Connection, source_id: str, coll: str) -> int:
    """Delete a source's chunks, queueing the deletion of their vectors from ``coll``."""
    c = t.chunks.c
    rows = conn.execute(select(c.id, c.app_name).where(c.source_id == source_id)).all()
    if not rows:
        return 0
    conn.execute(delete(t.chunks).where(c.source_id == source_id))
    conn.execute(
        insert(t.outbox),
        [{"chunk_id": r[0], "app_name": r[1], "action": "delete", "vector_collection": coll} for r in rows],
    )
    return len(rows)


def _visible_sources(
    conn: Connection, app_name: str, scopes: Sequence[Scope], source_ids: set[str]
) -> dict[str, SourceRecord]:
    """The sources among ``source_ids`` in one of ``scopes``. Looked up by id only (the unique index)
    and filtered here: with the scope condition in SQL, SQLite (no statistics) may walk a scope's
    index instead, which made a search at 100k chunks spend 100+ ms here."""
    if not source_ids:
        return {}
    wanted = set(scopes)
    rows = conn.execute(select(t.sources).where(t.sources.c.id.in_(source_ids))).all()
    return {
        record.id: record
        for record in map(source_of, rows)
        if record.app_name == app_name and record.scope in wanted
    }


def _current(
    conn: Connection, app_name: str, scopes: Sequence[Scope], chunks: list[ChunkRecord]
) -> dict[str, tuple[ChunkRecord, SourceRecord]]:
    """The chunks of the current version of a visible source, with the source."""
    sources = _visible_sources(conn, app_name, scopes, {chunk.source_id for chunk in chunks})
    return {
        chunk.id: (chunk, sources[chunk.source_id])
        for chunk in chunks
        if chunk.source_id in sources and sources[chunk.source_id].version == chunk.version
    }
