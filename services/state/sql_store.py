"""The state store on SQLAlchemy: a SQLite file (the embedded default) or PostgreSQL, chosen by URL.

Each method is one transaction function run by sessionkit_server.common.db.Database. Writers lock the
session row (SELECT ... FOR UPDATE on PostgreSQL; BEGIN IMMEDIATE on SQLite), then the user and app
scope rows when a write touches them, always in that order, so concurrent writers from any number
of replicas serialize per session without deadlocks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

from sqlalchemy import Connection, Row, and_, bindparam, delete, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from sessionkit import reasons
from sessionkit.errors import SessionNotFound
from sessionkit.jsonvalues import dumps, loads
from sessionkit_server.common.db import Database
from sessionkit_server.common.idempotency import IdempotencyLedger, KeySpace, key_state
from sessionkit_server.common.migrate import upgrader
from sessionkit_server.state import tables as t
from sessionkit_server.state.store import (
    EVENT_APPEND,
    EVENT_RESPONSE_PREFIX,
    STATE_WRITE,
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

T = TypeVar("T")
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


# The write path's statements, built once: bound parameters, compiled once per dialect and cached.
_S, _I, _V = t.sessions.c, t.idempotency.c, t.state_versions.c
# The idempotency record of the write's key is joined into the session lock: a keyed write costs no
# extra round trip to look it up (the lock on the session row serializes every user of its keys).
_LOCK = (
    select(
        t.sessions,
        _I.method.label("idem_method"),
        _I.response.label("idem_response"),
        _I.create_us.label("idem_us"),
    )
    .outerjoin(
        t.idempotency,
        and_(
            _I.app_name == _S.app_name,
            _I.user_id == _S.user_id,
            _I.scope == _S.session_id,
            _I.key == bindparam("p_idem"),
        ),
    )
    .where(
        _S.app_name == bindparam("p_app"),
        _S.user_id == bindparam("p_user"),
        _S.session_id == bindparam("p_session"),
        or_(_S.expire_us.is_(None), _S.expire_us > bindparam("p_now")),
    )
    .with_for_update(of=t.sessions)
)
_UPDATE_SESSION = (
    update(t.sessions)
    .where(_S.pk == bindparam("p_pk"))
    .values(
        state=bindparam("p_state"),
        version=bindparam("p_version"),
        update_us=bindparam("p_now"),
        expire_us=bindparam("p_expire"),
    )
)
_U, _A = t.user_states.c, t.app_states.c
_READ = (
    select(t.sessions, _U.state.label("user_state"), _A.state.label("app_state"))
    .outerjoin(t.user_states, and_(_U.app_name == _S.app_name, _U.user_id == _S.user_id))
    .outerjoin(t.app_states, _A.app_name == _S.app_name)
    .where(
        _S.app_name == bindparam("p_app"),
        _S.user_id == bindparam("p_user"),
        _S.session_id == bindparam("p_session"),
        or_(_S.expire_us.is_(None), _S.expire_us > bindparam("p_now")),
    )
)
_INSERT_VERSION = insert(t.state_versions)
_PRUNE_VERSIONS = delete(t.state_versions).where(
    _V.session_pk == bindparam("p_pk"), _V.version <= bindparam("p_oldest")
)


def _insert(conn: Connection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def _lock_session(conn: Connection, key: SessionKey, now_us: int, idempotency_key: str) -> Row[Any]:
    """The live session's row, locked, with the record of ``idempotency_key`` (``idem_*``)."""
    params = {
        "p_app": key.app_name,
        "p_user": key.user_id,
        "p_session": key.session_id,
        "p_now": now_us,
        "p_idem": idempotency_key,
    }
    row = conn.execute(_LOCK, params).first()
    if row is None:
        raise _not_found(key)
    return row


class _Key:
    """The idempotency key of a write on a locked session, decided by the shared ledger's rules."""

    def __init__(
        self, keys: IdempotencyLedger, row: Row[Any], key: SessionKey, idem: str, method: str
    ) -> None:
        self.keys, self.idem, self.method = keys, idem, method
        self.space = KeySpace(key.app_name, key.user_id, key.session_id)
        m = row._mapping
        self._record = SimpleNamespace(
            method=m["idem_method"], response=m["idem_response"], create_us=m["idem_us"]
        )

    def replayed(self, now_us: int) -> bytes | None:
        """The stored response of this key (raises ``key_reused`` when the other kind used it)."""
        if not self.idem:
            return None
        return key_state(self._record, self.idem, self.method, now_us).response

    def record(self, conn: Connection, response: bytes, now_us: int) -> None:
        if not self.idem:
            return
        if self._record.method is None:  # no record at all: the insert alone
            self.keys.insert_in(conn, self.space, self.idem, self.method, response, now_us)
        else:  # an expired record is replaced
            self.keys.record_in(conn, self.space, self.idem, self.method, response, now_us)


class _Scope:
    """A user or app scope row, loaded and locked on first use within a write."""

    def __init__(self, state: JsonObject) -> None:
        self.state = state
        self.original = dumps(state)

    @property
    def changed(self) -> bool:
        return dumps(self.state) != self.original


class SqlWriteTx(WriteTx):
    def __init__(self, conn: Connection, row: Row[Any], now_us: int, key: _Key) -> None:
        self._conn = conn
        self._key = key
        self._pk: int = row._mapping["pk"]
        self._now_us = now_us
        self.session = _record(row)
        self.state = loads(row._mapping["state"])
        self.replayed_response = key.replayed(now_us)
        self._user: _Scope | None = None
        self._app: _Scope | None = None
        self._done: tuple[Change, bytes] | None = None

    def user_state(self) -> JsonObject:
        if self._user is None:
            k = self.session.key
            self._user = _Scope(
                self._lock_scope(t.user_states, {"app_name": k.app_name, "user_id": k.user_id})
            )
        return self._user.state

    def app_state(self) -> JsonObject:
        if self._app is None:
            self._app = _Scope(self._lock_scope(t.app_states, {"app_name": self.session.key.app_name}))
        return self._app.state

    def _lock_scope(self, table: Any, ident: dict[str, str]) -> JsonObject:
        self._conn.execute(
            _insert(self._conn)(table)
            .values(**ident, state="{}", update_us=self._now_us)
            .on_conflict_do_nothing()
        )
        where = and_(*(table.c[name] == value for name, value in ident.items()))
        state = self._conn.execute(select(table.c.state).where(where).with_for_update()).scalar_one()
        return dict(loads(state))

    def commit(self, change: Change, response: bytes) -> None:
        self._done = (change, response)

    def persist(self, history_limit: int) -> None:
        if self._done is None:
            return
        change, response = self._done
        conn, now, version = self._conn, self._now_us, self.next_version
        state_text = dumps(self.state)
        expire = _expire(self.session.ttl_seconds, now)
        conn.execute(
            _UPDATE_SESSION,
            {"p_pk": self._pk, "p_state": state_text, "p_version": version, "p_now": now, "p_expire": expire},
        )
        k = self.session.key
        if self._user is not None and self._user.changed:
            u = t.user_states.c
            conn.execute(
                update(t.user_states)
                .where(u.app_name == k.app_name, u.user_id == k.user_id)
                .values(state=dumps(self._user.state), update_us=now)
            )
        if self._app is not None and self._app.changed:
            conn.execute(
                update(t.app_states)
                .where(t.app_states.c.app_name == k.app_name)
                .values(state=dumps(self._app.state), update_us=now)
            )
        has_value = change.value is not None or change.operation == Operation.SET
        conn.execute(
            _INSERT_VERSION,
            {
                "session_pk": self._pk,
                "version": version,
                "operation": int(change.operation),
                "key": change.key,
                "value": dumps(change.value) if has_value else None,
                "state": state_text,
                "time_us": now,
            },
        )
        if version > history_limit:
            conn.execute(_PRUNE_VERSIONS, {"p_pk": self._pk, "p_oldest": version - history_limit})
        self._key.record(conn, response, now)


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
            "expire_us": _expire(ttl_seconds, now_us),
        }

        def run(conn: Connection) -> tuple[SessionRecord, bool]:
            # An expired session the reaper has not reached yet is gone for every reader: replace it.
            expired = list(
                conn.execute(select(t.sessions.c.pk).where(_where_key(key), ~_alive(now_us))).scalars()
            )
            if expired:
                _delete_pks(conn, expired)
            inserted = _insert(conn)(t.sessions).values(**values).on_conflict_do_nothing()
            pk = conn.execute(inserted.returning(t.sessions.c.pk)).scalar_one_or_none()
            if pk is None:
                if not get_if_exists:
                    raise reasons.SESSION_EXISTS.error(session_id=key.session_id, user_id=key.user_id)
                return _record(conn.execute(select(t.sessions).where(_where_key(key))).one()), False
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
            return _record(values), True

        return await self.db.write(run)

    async def get_session(self, key: SessionKey, now_us: int) -> SessionRecord | None:
        def run(conn: Connection) -> SessionRecord | None:
            row = conn.execute(select(t.sessions).where(_where_key(key), _alive(now_us))).first()
            return None if row is None else _record(row)

        return await self.db.read(run)

    async def list_sessions(
        self, app_name: str, user_id: str, limit: int, after: str | None, now_us: int
    ) -> ListPage:
        s = t.sessions.c
        query = select(t.sessions).where(s.app_name == app_name, s.user_id == user_id, _alive(now_us))
        if after is not None:
            query = query.where(s.session_id > after)
        query = query.order_by(s.session_id).limit(limit + 1)

        def run(conn: Connection) -> ListPage:
            records = [_record(row) for row in conn.execute(query).all()]
            more = len(records) > limit
            records = records[:limit]
            return ListPage(records, records[-1].key.session_id if more else None)

        return await self.db.read(run)

    async def delete_session(self, key: SessionKey) -> bool:
        def run(conn: Connection) -> bool:
            pk = conn.execute(select(t.sessions.c.pk).where(_where_key(key))).scalar_one_or_none()
            if pk is None:
                return False
            _delete_pks(conn, [pk])
            return True

        return await self.db.write(run)

    async def read_state(
        self, key: SessionKey, now_us: int
    ) -> tuple[SessionRecord, JsonObject, JsonObject, JsonObject]:
        # One statement: the session row with its user and app scopes joined in.
        params = {"p_app": key.app_name, "p_user": key.user_id, "p_session": key.session_id, "p_now": now_us}

        def run(conn: Connection) -> tuple[SessionRecord, JsonObject, JsonObject, JsonObject]:
            row = conn.execute(_READ, params).first()
            if row is None:
                raise _not_found(key)
            m = row._mapping
            return (
                _record(row),
                loads(m["state"]),
                loads(m["user_state"] or "{}"),
                loads(m["app_state"] or "{}"),
            )

        return await self.db.read(run)

    async def write(
        self, key: SessionKey, idempotency_key: str, now_us: int, apply: Callable[[WriteTx], T]
    ) -> T:
        def run(conn: Connection) -> T:
            row = _lock_session(conn, key, now_us, idempotency_key)
            tx = SqlWriteTx(conn, row, now_us, _Key(self.keys, row, key, idempotency_key, STATE_WRITE))
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
            select(t.state_versions).join(t.sessions, t.sessions.c.pk == v.session_pk).where(_where_key(key))
        )
        if after is not None:
            query = query.where(v.version > after).order_by(v.version)
        else:
            if before is not None:
                query = query.where(v.version < before)
            query = query.order_by(v.version.desc())

        def run(conn: Connection) -> list[VersionRecord]:
            return [_version(row) for row in conn.execute(query.limit(limit)).all()]

        return await self.db.read(run)

    async def get_version(self, key: SessionKey, version: int) -> VersionRecord | None:
        v = t.state_versions.c
        query = (
            select(t.state_versions)
            .join(t.sessions, t.sessions.c.pk == v.session_pk)
            .where(_where_key(key), v.version == version)
        )

        def run(conn: Connection) -> VersionRecord | None:
            row = conn.execute(query).first()
            return None if row is None else _version(row)

        return await self.db.read(run)

    async def append_event(
        self, key: SessionKey, event: EventRecord, idempotency_key: str, now_us: int
    ) -> EventRecord:
        e = t.events.c

        def run(conn: Connection) -> EventRecord:
            row = _lock_session(conn, key, now_us, idempotency_key)
            pk = row._mapping["pk"]
            idem = _Key(self.keys, row, key, idempotency_key, EVENT_APPEND)
            earlier = idem.replayed(now_us)
            if earlier is not None:
                event_id = int(earlier[len(EVENT_RESPONSE_PREFIX) :])
                return _event(conn.execute(select(t.events).where(e.id == event_id)).one())
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
            ttl = row._mapping["ttl_seconds"]
            conn.execute(
                update(t.sessions)
                .where(t.sessions.c.pk == pk)
                .values(
                    event_count=t.sessions.c.event_count + 1, update_us=now_us, expire_us=_expire(ttl, now_us)
                )
            )
            idem.record(conn, EVENT_RESPONSE_PREFIX + str(event_id).encode(), now_us)
            return EventRecord(event_id, event.role, event.content, event.author, event.metadata, now_us)

        return await self.db.write(run)

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

        def run(conn: Connection) -> list[EventRecord]:
            events = [_event(row) for row in conn.execute(query).all()]
            return events[::-1] if tail > 0 else events

        return await self.db.read(run)

    async def reap(self, now_us: int, idempotency_before_us: int) -> int:
        s = t.sessions.c

        def run(conn: Connection) -> int:
            expired = select(s.pk).where(s.expire_us.is_not(None), s.expire_us <= now_us).limit(1000)
            pks = list(conn.execute(expired).scalars())
            if pks:
                _delete_pks(conn, pks)
            conn.execute(delete(t.idempotency).where(t.idempotency.c.create_us < idempotency_before_us))
            return len(pks)

        return await self.db.write(run)


def _delete_pks(conn: Connection, pks: list[int]) -> None:
    # Explicit child deletes: correct whether or not the backend enforces ON DELETE CASCADE. The
    # sessions' idempotency keys go with them (a session created again under the same id is new).
    s, i = t.sessions.c, t.idempotency.c
    conn.execute(
        delete(t.idempotency).where(
            select(s.pk)
            .where(s.pk.in_(pks), s.app_name == i.app_name, s.user_id == i.user_id, s.session_id == i.scope)
            .exists()
        )
    )
    for table in (t.events, t.state_versions):
        conn.execute(delete(table).where(table.c.session_pk.in_(pks)))
    conn.execute(delete(t.sessions).where(t.sessions.c.pk.in_(pks)))


def _not_found(key: SessionKey) -> SessionNotFound:
    return SessionNotFound(
        f"session {key.session_id!r} of user {key.user_id!r} (app {key.app_name!r}) not found",
        metadata={"session_id": key.session_id, "user_id": key.user_id, "app_name": key.app_name},
    )
