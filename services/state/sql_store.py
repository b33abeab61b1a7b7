"""The state store on SQLAlchemy: a SQLite file (the embedded default) or PostgreSQL, chosen by URL.

Writers lock the session row (SELECT ... FOR UPDATE on PostgreSQL; BEGIN IMMEDIATE on SQLite),
then the user and app scope rows when a write touches them, always in that order, so concurrent
writers from any number of replicas serialize per session without deadlocks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Row, and_, delete, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common.db import create_engine, is_postgres
from services.common.migrate import upgrade
from services.state import tables as t
from services.state.store import (
    Change,
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
from sessionkit.errors import AlreadyExists, SessionNotFound
from sessionkit.jsonvalues import dumps, loads

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "sk_state_alembic_version"


def _record(row: Row[Any] | Mapping[str, Any]) -> SessionRecord:
    m = row._mapping if isinstance(row, Row) else row
    return SessionRecord(
        key=SessionKey(m["app_name"], m["user_id"], m["session_id"]),
        create_us=m["create_us"],
        update_us=m["update_us"],
        ttl_seconds=m["ttl_seconds"],
        expire_us=m["expire_us"],
        version=m["version"],
        event_count=m["event_count"],
    )


def _where_key(key: SessionKey) -> Any:
    s = t.sessions.c
    return and_(s.app_name == key.app_name, s.user_id == key.user_id, s.session_id == key.session_id)


def _alive(now_us: int) -> Any:
    return or_(t.sessions.c.expire_us.is_(None), t.sessions.c.expire_us > now_us)


def _expire(ttl_seconds: int | None, now_us: int) -> int | None:
    return None if ttl_seconds is None else now_us + ttl_seconds * 1_000_000


def _event(row: Row[Any]) -> EventRecord:
    m = row._mapping
    return EventRecord(m["id"], m["role"], m["content"], m["author"], loads(m["metadata"]), m["create_us"])


def _version(row: Row[Any]) -> VersionRecord:
    m = row._mapping
    value = None if m["value"] is None else loads(m["value"])
    return VersionRecord(
        m["version"], Operation(m["operation"]), m["key"], value, loads(m["state"]), m["time_us"]
    )


class _Scope:
    """A user or app scope row, loaded and locked on first use within a write."""

    def __init__(self, state: JsonObject) -> None:
        self.state = state
        self.original = dumps(state)

    @property
    def changed(self) -> bool:
        return dumps(self.state) != self.original


class SqlWriteTx(WriteTx):
    def __init__(self, conn: AsyncConnection, row: Row[Any], now_us: int) -> None:
        self._conn = conn
        self._pk: int = row._mapping["pk"]
        self._now_us = now_us
        self.session = _record(row)
        self.state = loads(row._mapping["state"])
        self.replayed_response = None
        self._user: _Scope | None = None
        self._app: _Scope | None = None
        self._done: tuple[Change, bytes, int] | None = None

    async def user_state(self) -> JsonObject:
        if self._user is None:
            k = self.session.key
            state = await self._lock_scope(t.user_states, {"app_name": k.app_name, "user_id": k.user_id})
            self._user = _Scope(state)
        return self._user.state

    async def app_state(self) -> JsonObject:
        if self._app is None:
            self._app = _Scope(await self._lock_scope(t.app_states, {"app_name": self.session.key.app_name}))
        return self._app.state

    async def _lock_scope(self, table: Any, ident: dict[str, str]) -> JsonObject:
        dialect_insert = postgresql.insert if self._conn.dialect.name == "postgresql" else sqlite.insert
        await self._conn.execute(
            dialect_insert(table).values(**ident, state="{}", update_us=self._now_us).on_conflict_do_nothing()
        )
        where = and_(*(table.c[name] == value for name, value in ident.items()))
        state = (await self._conn.execute(select(table.c.state).where(where).with_for_update())).scalar_one()
        return dict(loads(state))

    def commit(self, change: Change, response: bytes) -> None:
        self._done = (change, response, self.next_version)

    async def persist(self, idempotency_key: str, history_limit: int) -> None:
        if self._done is None:
            return
        change, response, version = self._done
        conn, now = self._conn, self._now_us
        state_text = dumps(self.state)
        await conn.execute(
            update(t.sessions)
            .where(t.sessions.c.pk == self._pk)
            .values(
                state=state_text,
                version=version,
                update_us=now,
                expire_us=_expire(self.session.ttl_seconds, now),
            )
        )
        k = self.session.key
        if self._user is not None and self._user.changed:
            await conn.execute(
                update(t.user_states)
                .where(and_(t.user_states.c.app_name == k.app_name, t.user_states.c.user_id == k.user_id))
                .values(state=dumps(self._user.state), update_us=now)
            )
        if self._app is not None and self._app.changed:
            await conn.execute(
                update(t.app_states)
                .where(t.app_states.c.app_name == k.app_name)
                .values(state=dumps(self._app.state), update_us=now)
            )
        await conn.execute(
            insert(t.state_versions).values(
                session_pk=self._pk,
                version=version,
                operation=int(change.operation),
                key=change.key,
                value=None
                if change.value is None and change.operation != Operation.SET
                else dumps(change.value),
                state=state_text,
                time_us=now,
            )
        )
        if version > history_limit:
            await conn.execute(
                delete(t.state_versions).where(
                    and_(
                        t.state_versions.c.session_pk == self._pk,
                        t.state_versions.c.version <= version - history_limit,
                    )
                )
            )
        if idempotency_key:
            await conn.execute(
                insert(t.idempotency).values(
                    session_pk=self._pk, key=idempotency_key, response=response, create_us=now
                )
            )
        self.session.version = version
        self.session.update_us = now
        self.session.expire_us = _expire(self.session.ttl_seconds, now)


class SqlStateStore(StateStore):
    def __init__(self, url: str, history_limit: int = 100) -> None:
        self.url = url
        self.history_limit = history_limit
        self.engine: AsyncEngine = create_engine(url, immediate=True)
        # SQLite readers use their own connections with a deferred BEGIN: a WAL snapshot, no lock wait.
        self.read_engine: AsyncEngine = (
            self.engine if is_postgres(self.engine) else create_engine(url, immediate=False)
        )

    async def start(self) -> None:
        await upgrade(self.engine, MIGRATIONS, VERSION_TABLE)

    async def close(self) -> None:
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()

    async def create_session(
        self,
        key: SessionKey,
        ttl_seconds: int | None,
        initial_state: JsonObject | None,
        get_if_exists: bool,
        now_us: int,
    ) -> tuple[SessionRecord, bool]:
        dialect_insert = postgresql.insert if is_postgres(self.engine) else sqlite.insert
        state_text = dumps(initial_state or {})
        version = 1 if initial_state else 0
        async with self.engine.begin() as conn:
            # An expired session that the reaper has not reached yet is gone for every reader: replace it.
            await conn.execute(delete(t.sessions).where(and_(_where_key(key), ~_alive(now_us))))
            values = {
                "app_name": key.app_name,
                "user_id": key.user_id,
                "session_id": key.session_id,
                "state": state_text,
                "version": version,
                "event_count": 0,
                "create_us": now_us,
                "update_us": now_us,
                "ttl_seconds": ttl_seconds,
                "expire_us": _expire(ttl_seconds, now_us),
            }
            result = await conn.execute(
                dialect_insert(t.sessions)
                .values(**values)
                .on_conflict_do_nothing()
                .returning(t.sessions.c.pk)
            )
            pk = result.scalar_one_or_none()
            if pk is None:
                if not get_if_exists:
                    raise AlreadyExists(
                        f"session {key.session_id!r} of user {key.user_id!r} already exists",
                        reason="SESSION_EXISTS",
                    )
                row = (await conn.execute(select(t.sessions).where(_where_key(key)))).one()
                return _record(row), False
            if initial_state:
                await conn.execute(
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
            return _record(values), True

    async def get_session(self, key: SessionKey, now_us: int) -> SessionRecord | None:
        async with self.read_engine.begin() as conn:
            row = (await conn.execute(select(t.sessions).where(_where_key(key), _alive(now_us)))).first()
        return None if row is None else _record(row)

    async def list_sessions(
        self, app_name: str, user_id: str, limit: int, after: str | None, now_us: int
    ) -> ListPage:
        s = t.sessions.c
        query = select(t.sessions).where(s.app_name == app_name, s.user_id == user_id, _alive(now_us))
        if after is not None:
            query = query.where(s.session_id > after)
        query = query.order_by(s.session_id).limit(limit + 1)
        async with self.read_engine.begin() as conn:
            rows = (await conn.execute(query)).all()
        records = [_record(row) for row in rows[:limit]]
        more = len(rows) > limit
        return ListPage(records, records[-1].key.session_id if more else None)

    async def delete_session(self, key: SessionKey) -> bool:
        async with self.engine.begin() as conn:
            pk = (await conn.execute(select(t.sessions.c.pk).where(_where_key(key)))).scalar_one_or_none()
            if pk is None:
                return False
            await self._delete_pks(conn, [pk])
            return True

    async def _delete_pks(self, conn: AsyncConnection, pks: list[int]) -> None:
        # Explicit child deletes: correct whether or not the backend enforces ON DELETE CASCADE.
        for table in (t.idempotency, t.events, t.state_versions):
            await conn.execute(delete(table).where(table.c.session_pk.in_(pks)))
        await conn.execute(delete(t.sessions).where(t.sessions.c.pk.in_(pks)))

    async def read_state(
        self, key: SessionKey, now_us: int
    ) -> tuple[SessionRecord, JsonObject, JsonObject, JsonObject]:
        async with self.read_engine.begin() as conn:
            row = (await conn.execute(select(t.sessions).where(_where_key(key), _alive(now_us)))).first()
            if row is None:
                raise _not_found(key)
            u, a = t.user_states.c, t.app_states.c
            user = (
                await conn.execute(
                    select(u.state).where(u.app_name == key.app_name, u.user_id == key.user_id)
                )
            ).scalar_one_or_none()
            app = (await conn.execute(select(a.state).where(a.app_name == key.app_name))).scalar_one_or_none()
        return _record(row), loads(row._mapping["state"]), loads(user or "{}"), loads(app or "{}")

    @asynccontextmanager
    async def write(self, key: SessionKey, idempotency_key: str, now_us: int) -> AsyncIterator[WriteTx]:
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(t.sessions).where(_where_key(key), _alive(now_us)).with_for_update()
                )
            ).first()
            if row is None:
                raise _not_found(key)
            tx = SqlWriteTx(conn, row, now_us)
            if idempotency_key:
                tx.replayed_response = (
                    await conn.execute(
                        select(t.idempotency.c.response).where(
                            t.idempotency.c.session_pk == row._mapping["pk"],
                            t.idempotency.c.key == idempotency_key,
                        )
                    )
                ).scalar_one_or_none()
            yield tx
            if tx.replayed_response is None:
                await tx.persist(idempotency_key, self.history_limit)

    async def list_versions(
        self, key: SessionKey, limit: int, before: int | None, after: int | None = None
    ) -> list[VersionRecord]:
        v = t.state_versions.c
        query = (
            select(t.state_versions).join(t.sessions, t.sessions.c.pk == v.session_pk).where(_where_key(key))
        )
        if after is not None:
            query = query.where(v.version > after).order_by(v.version)
        else:
            if before is not None:
                query = query.where(v.version < before)
            query = query.order_by(v.version.desc())
        async with self.read_engine.begin() as conn:
            rows = (await conn.execute(query.limit(limit))).all()
        return [_version(row) for row in rows]

    async def get_version(self, key: SessionKey, version: int) -> VersionRecord | None:
        v = t.state_versions.c
        query = (
            select(t.state_versions)
            .join(t.sessions, t.sessions.c.pk == v.session_pk)
            .where(_where_key(key), v.version == version)
        )
        async with self.read_engine.begin() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _version(row)

    async def append_event(
        self, key: SessionKey, event: EventRecord, idempotency_key: str, now_us: int
    ) -> EventRecord:
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(t.sessions).where(_where_key(key), _alive(now_us)).with_for_update()
                )
            ).first()
            if row is None:
                raise _not_found(key)
            pk = row._mapping["pk"]
            e = t.events.c
            if idempotency_key:
                earlier = (
                    await conn.execute(
                        select(t.idempotency.c.response).where(
                            t.idempotency.c.session_pk == pk, t.idempotency.c.key == idempotency_key
                        )
                    )
                ).scalar_one_or_none()
                if earlier is not None:
                    first = (await conn.execute(select(t.events).where(e.id == int(earlier)))).one()
                    return _event(first)
            event_id = (
                await conn.execute(
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
                )
            ).scalar_one()
            ttl = row._mapping["ttl_seconds"]
            await conn.execute(
                update(t.sessions)
                .where(t.sessions.c.pk == pk)
                .values(
                    event_count=t.sessions.c.event_count + 1, update_us=now_us, expire_us=_expire(ttl, now_us)
                )
            )
            if idempotency_key:
                await conn.execute(
                    insert(t.idempotency).values(
                        session_pk=pk, key=idempotency_key, response=str(event_id).encode(), create_us=now_us
                    )
                )
        return EventRecord(event_id, event.role, event.content, event.author, event.metadata, now_us)

    async def list_events(
        self, key: SessionKey, limit: int, after_id: int, tail: int, author: str
    ) -> list[EventRecord]:
        e = t.events.c
        query = select(t.events).join(t.sessions, t.sessions.c.pk == e.session_pk).where(_where_key(key))
        if author:
            query = query.where(e.author == author)
        if tail > 0:
            query = query.order_by(e.id.desc()).limit(tail)
        else:
            query = query.where(e.id > after_id).order_by(e.id).limit(limit)
        async with self.read_engine.begin() as conn:
            rows = (await conn.execute(query)).all()
        events = [_event(row) for row in rows]
        return events[::-1] if tail > 0 else events

    async def reap(self, now_us: int, idempotency_before_us: int) -> int:
        s = t.sessions.c
        async with self.engine.begin() as conn:
            pks = list(
                (
                    await conn.execute(
                        select(s.pk).where(s.expire_us.is_not(None), s.expire_us <= now_us).limit(1000)
                    )
                ).scalars()
            )
            if pks:
                await self._delete_pks(conn, pks)
            await conn.execute(delete(t.idempotency).where(t.idempotency.c.create_us < idempotency_before_us))
        return len(pks)


def _not_found(key: SessionKey) -> SessionNotFound:
    return SessionNotFound(
        f"session {key.session_id!r} of user {key.user_id!r} (app {key.app_name!r}) not found",
        metadata={"session_id": key.session_id, "user_id": key.user_id, "app_name": key.app_name},
    )
