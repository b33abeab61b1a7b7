"""The state tables' rows on SQL: conversions to records, the session lock (with the write's
idempotency record joined in) and the deletion of sessions with everything that belongs to them.
Shared by sql_store.py (the store) and sql_write.py (a write's unit of work)."""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, Row, and_, bindparam, delete, insert, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from sessionkit.errors import SessionNotFound
from sessionkit.jsonvalues import loads
from sessionkit_server.common.driver_sql import SqliteStatement
from sessionkit_server.common.idempotency import IdempotencyLedger, KeySpace, KeyTaken, key_state
from sessionkit_server.common.pg_reads import CompiledRead
from sessionkit_server.state import tables as t
from sessionkit_server.state.store import (
    EventRecord,
    Operation,
    SessionKey,
    SessionRecord,
    VersionRecord,
)


def session_record(row: Row[Any] | Mapping[str, Any]) -> SessionRecord:
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


def where_key(key: SessionKey) -> Any:
    s = t.sessions.c
    return and_(s.app_name == key.app_name, s.user_id == key.user_id, s.session_id == key.session_id)


def alive(now_us: int) -> Any:
    return or_(t.sessions.c.expire_us.is_(None), t.sessions.c.expire_us > now_us)


def expire_at(ttl_seconds: int | None, now_us: int) -> int | None:
    return None if ttl_seconds is None else now_us + ttl_seconds * 1_000_000


def event_record(row: Row[Any]) -> EventRecord:
    m = row._mapping
    return EventRecord(m["id"], m["role"], m["content"], m["author"], loads(m["metadata"]), m["create_us"])


def version_record(row: Row[Any]) -> VersionRecord:
    m = row._mapping
    value = None if m["value"] is None else loads(m["value"])
    return VersionRecord(
        m["version"], Operation(m["operation"]), m["key"], value, loads(m["state"]), m["time_us"]
    )


# The write path's statements, built once: bound parameters, compiled once per dialect and cached.
_S, _I = t.sessions.c, t.idempotency.c
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
_U, _A = t.user_states.c, t.app_states.c
READ_STATE = CompiledRead(
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


def dialect_insert(conn: Connection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


_LOCK_SQLITE = SqliteStatement(_LOCK)  # SQLite locks the database at BEGIN IMMEDIATE instead
_SQLITE_INSERT_KEY = SqliteStatement(
    insert(t.idempotency),
    column_keys=("app_name", "user_id", "scope", "key", "method", "response", "create_us"),
)


def lock_session(conn: Connection, key: SessionKey, now_us: int, idempotency_key: str) -> Mapping[str, Any]:
    """The live session's row, locked, with the record of ``idempotency_key`` (``idem_*``)."""
    params = {
        "p_app": key.app_name,
        "p_user": key.user_id,
        "p_session": key.session_id,
        "p_now": now_us,
        "p_idem": idempotency_key,
    }
    found: Mapping[str, Any] | None
    if conn.dialect.name == "sqlite":
        found = _LOCK_SQLITE.first(conn, params)
    else:
        row = conn.execute(_LOCK, params).first()
        found = None if row is None else dict(row._mapping)
    if found is None:
        raise not_found(key)
    return found


class WriteKey:
    """The idempotency key of a write on a locked session, decided by the shared ledger's rules."""

    def __init__(
        self, keys: IdempotencyLedger, m: Mapping[str, Any], key: SessionKey, idem: str, method: str
    ) -> None:
        self.keys, self.idem, self.method = keys, idem, method
        self.space = KeySpace(key.app_name, key.user_id, key.session_id)
        self._stored = SimpleNamespace(
            method=m["idem_method"], response=m["idem_response"], create_us=m["idem_us"]
        )

    def replayed(self, now_us: int) -> bytes | None:
        """The stored response of this key (raises ``key_reused`` when the other kind used it)."""
        if not self.idem:
            return None
        return key_state(self._stored, self.idem, self.method, now_us).response

    def record(self, conn: Connection, response: bytes, now_us: int) -> None:
        if not self.idem:
            return
        if self._stored.method is None and conn.dialect.name == "sqlite":
            # No record at all: the insert alone (on the driver connection, the write's hot path).
            s = self.space
            row = {"app_name": s.app_name, "user_id": s.user_id, "scope": s.scope, "key": self.idem}
            try:
                _SQLITE_INSERT_KEY.execute(
                    conn, {**row, "method": self.method, "response": response, "create_us": now_us}
                )
            except IntegrityError as error:
                raise KeyTaken from error
        elif self._stored.method is None:  # no record at all: the insert alone
            self.keys.insert_in(conn, self.space, self.idem, self.method, response, now_us)
        else:  # an expired record is replaced
            self.keys.record_in(conn, self.space, self.idem, self.method, response, now_us)


def delete_sessions(conn: Connection, pks: list[int]) -> None:
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


def not_found(key: SessionKey) -> SessionNotFound:
    return SessionNotFound(
        f"session {key.session_id!r} of user {key.user_id!r} (app {key.app_name!r}) not found",
        metadata={"session_id": key.session_id, "user_id": key.user_id, "app_name": key.app_name},
    )
