"""The state store on SQLAlchemy: a SQLite file (the embedded default) or PostgreSQL, chosen by URL.

Each method is one transaction function run by sessionkit_server.common.db.Database. Writers lock the
session row (SELECT ... FOR UPDATE on PostgreSQL; BEGIN IMMEDIATE on SQLite), then the user and app
scope rows when a write touches them, always in that order, so concurrent writers from any number
of replicas serialize per session without deadlocks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection, delete, insert, select, update

from sessionkit import reasons
from sessionkit.errors import ServiceUnavailable
from sessionkit.jsonvalues import dumps
from sessionkit_server.common.db import Database
from sessionkit_server.common.idempotency import IdempotencyLedger
from sessionkit_server.common.migrate import upgrader
from sessionkit_server.state import sql_write
from sessionkit_server.state import tables as t
from sessionkit_server.state.sql_rows import (
    READ_STATE,
    WriteKey,
    alive,
    delete_sessions,
    dialect_insert,
    event_record,
    expire_at,
    lock_session,
    not_found,
    session_record,
    version_record,
    where_key,
)
from sessionkit_server.state.store import (
    EVENT_APPEND,
    EVENT_RESPONSE_PREFIX,
    STATE_WRITE,
    EventRecord,
    JsonObject,
    ListPage,
    Operation,
    SessionKey,
    SessionRecord,
    StateStore,
    VersionRecord,
    WriteTx,
)

T = TypeVar("T")
MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "sk_state_alembic_version"


class SqlStateStore(StateStore):
    def __init__(self, db: str | Database, history_limit: int = 100, exclusive: bool = False) -> None:
        """``db``: a URL (the store opens and closes its own Database) or a Database shared with other
        services' stores (its owner closes it). ``exclusive``: take the SQLite file's lock, so no
        second server process opens it."""
        self.history_limit = history_limit
        self._owns_db = isinstance(db, str)
        self.db = Database(db) if isinstance(db, str) else db
        self.exclusive = exclusive
        self.keys = IdempotencyLedger(self.db, t.idempotency)

    @property
    def url(self) -> str:
        return self.db.url

    async def start(self) -> None:
        if self.exclusive:
            self.db.lock_exclusive()
        await self.db.migrate(upgrader(MIGRATIONS, VERSION_TABLE), VERSION_TABLE)

    async def close(self) -> None:
        if self._owns_db:
            await self.db.close()

    async def create_session(
        self,
        key: SessionKey,
        ttl_seconds: int | None,
        initial_state: JsonObject | None,
        get_if_exists: bool,
        now_us: int,
    ) -> tuple[SessionRecord, bool]:
        state_text = dumps(initial_state or {})
        values = {
            "app_name": key.app_name,
            "user_id": key.user_id,
            "session_id": key.session_id,
            "state": state_text,
            "version": 1 if initial_state else 0,
            "event_count": 0,
            "create_us": now_us,
            "update_us": now_us,
            "ttl_seconds": ttl_seconds,
            "expire_us": expire_at(ttl_seconds, now_us),
        }

        def run(conn: Connection) -> tuple[SessionRecord, bool]:
            # An expired session the reaper has not reached yet is gone for every reader: replace it.
            expired = list(
                conn.execute(select(t.sessions.c.pk).where(where_key(key), ~alive(now_us))).scalars()
            )
            if expired:
                delete_sessions(conn, expired)
            inserted = dialect_insert(conn)(t.sessions).values(**values).on_conflict_do_nothing()
            pk = conn.execute(inserted.returning(t.sessions.c.pk)).scalar_one_or_none()
            if pk is None:
                if not get_if_exists:
                    raise reasons.SESSION_EXISTS.error(session_id=key.session_id, user_id=key.user_id)
                return session_record(conn.execute(select(t.sessions).where(where_key(key))).one()), False
            if initial_state:
                conn.execute(
                    insert(t.state_versions).values(
                        session_pk=pk,
                        version=1,
                        operation=int(Operation.SAVE),
                        key="",
                        value=None,
                        state=state_text,
                        time_us=now_us,
                    )
                )
            return session_record(values), True

        try:
            return await self.db.write(run)
        except ServiceUnavailable as error:
            # Read-only storage: getting a session that exists needs no write, and the SDK gets its
            # session this way before every read.
            if not get_if_exists or error.reason != reasons.STORAGE_READ_ONLY.name:
                raise
            found = await self.get_session(key, now_us)
            if found is None:
                raise
            return found, False

    async def get_session(self, key: SessionKey, now_us: int) -> SessionRecord | None:
        def run(conn: Connection) -> SessionRecord | None:
            row = conn.execute(select(t.sessions).where(where_key(key), alive(now_us))).first()
            return None if row is None else session_record(row)

        return await self.db.read(run)

    async def list_sessions(
        self, app_name: str, user_id: str, limit: int, after: str | None, now_us: int
    ) -> ListPage:
        s = t.sessions.c
        query = select(t.sessions).where(s.app_name == app_name, s.user_id == user_id, alive(now_us))
        if after is not None:
            query = query.where(s.session_id > after)
        query = query.order_by(s.session_id).limit(limit + 1)

        def run(conn: Connection) -> ListPage:
            records = [session_record(row) for row in conn.execute(query).all()]
            more = len(records) > limit
            records = records[:limit]
            return ListPage(records, records[-1].key.session_id if more else None)

        return await self.db.read(run)

    async def delete_session(self, key: SessionKey) -> bool:
        def run(conn: Connection) -> bool:
            pk = conn.execute(select(t.sessions.c.pk).where(where_key(key))).scalar_one_or_none()
            if pk is None:
                return False
            delete_sessions(conn, [pk])
            return True

        return await self.db.write(run)

    async def read_state_text(self, key: SessionKey, now_us: int) -> tuple[SessionRecord, str, str, str]:
        # One statement: the session row with its user and app scopes joined in.
        params = {"p_app": key.app_name, "p_user": key.user_id, "p_session": key.session_id, "p_now": now_us}

        m = await self.db.read_row(READ_STATE, params)
        if m is None:
            raise not_found(key)
        return session_record(m), m["state"], m["user_state"] or "{}", m["app_state"] or "{}"

    async def write(
        self, key: SessionKey, idempotency_key: str, now_us: int, apply: Callable[[WriteTx], T]
    ) -> T:
        def run(conn: Connection) -> T:
            row = lock_session(conn, key, now_us, idempotency_key)
            tx = sql_write.SqlWriteTx(
                conn, row, now_us, WriteKey(self.keys, row, key, idempotency_key, STATE_WRITE)
            )
            result = apply(tx)
            if tx.replayed_response is None:
                tx.persist(self.history_limit)
            return result

        return await self.db.write(run)

    async def list_versions(
        self, key: SessionKey, limit: int, before: int | None, after: int | None = None
    ) -> list[VersionRecord]:
        v = t.state_versions.c
        query = (
            select(t.state_versions).join(t.sessions, t.sessions.c.pk == v.session_pk).where(where_key(key))
        )
        if after is not None:
            query = query.where(v.version > after).order_by(v.version)
        else:
            if before is not None:
                query = query.where(v.version < before)
            query = query.order_by(v.version.desc())

        def run(conn: Connection) -> list[VersionRecord]:
            return [version_record(row) for row in conn.execute(query.limit(limit)).all()]

        return await self.db.read(run)

    async def get_version(self, key: SessionKey, version: int) -> VersionRecord | None:
        v = t.state_versions.c
        query = (
            select(t.state_versions)
            .join(t.sessions, t.sessions.c.pk == v.session_pk)
            .where(where_key(key), v.version == version)
        )

        def run(conn: Connection) -> VersionRecord | None:
            row = conn.execute(query).first()
            return None if row is None else version_record(row)

        return await self.db.read(run)

    async def append_event(
        self, key: SessionKey, event: EventRecord, idempotency_key: str, now_us: int
    ) -> EventRecord:
        e = t.events.c

        def run(conn: Connection) -> EventRecord:
            row = lock_session(conn, key, now_us, idempotency_key)
            pk = row["pk"]
            idem = WriteKey(self.keys, row, key, idempotency_key, EVENT_APPEND)
            earlier = idem.replayed(now_us)
            if earlier is not None:
                event_id = int(earlier[len(EVENT_RESPONSE_PREFIX) :])
                return event_record(conn.execute(select(t.events).where(e.id == event_id)).one())
            event_id = conn.execute(
                insert(t.events)
                .values(
                    session_pk=pk,
                    role=event.role,
                    content=event.content,
                    author=event.author,
                    metadata=dumps(event.metadata),
                    create_us=now_us,
                )
                .returning(e.id)
            ).scalar_one()
            ttl = row["ttl_seconds"]
            conn.execute(
                update(t.sessions)
                .where(t.sessions.c.pk == pk)
                .values(
                    event_count=t.sessions.c.event_count + 1,
                    update_us=now_us,
                    expire_us=expire_at(ttl, now_us),
                )
            )
            idem.record(conn, EVENT_RESPONSE_PREFIX + str(event_id).encode(), now_us)
            return EventRecord(event_id, event.role, event.content, event.author, event.metadata, now_us)

        return await self.db.write(run)

    async def list_events(
        self, key: SessionKey, limit: int, after_id: int, tail: int, author: str
    ) -> list[EventRecord]:
        e = t.events.c
        query = select(t.events).join(t.sessions, t.sessions.c.pk == e.session_pk).where(where_key(key))
        if author:
            query = query.where(e.author == author)
        if tail > 0:
            query = query.order_by(e.id.desc()).limit(tail)
        else:
            query = query.where(e.id > after_id).order_by(e.id).limit(limit)

        def run(conn: Connection) -> list[EventRecord]:
            events = [event_record(row) for row in conn.execute(query).all()]
            return events[::-1] if tail > 0 else events

        return await self.db.read(run)

    async def reap(self, now_us: int, idempotency_before_us: int) -> int:
        s = t.sessions.c

        def run(conn: Connection) -> int:
            expired = select(s.pk).where(s.expire_us.is_not(None), s.expire_us <= now_us).limit(1000)
            pks = list(conn.execute(expired).scalars())
            if pks:
                delete_sessions(conn, pks)
            conn.execute(delete(t.idempotency).where(t.idempotency.c.create_us < idempotency_before_us))
            return len(pks)

        return await self.db.write(run)
