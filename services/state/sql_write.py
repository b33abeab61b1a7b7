"""A state write's unit of work on SQL: the locked session with its scopes loaded on demand, and the
persisting of what the business layer changed (session row, scopes, a version, the history's pruning
and the idempotency record) in the write's transaction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, insert, select, update

from sessionkit.jsonvalues import dumps, loads
from sessionkit_server.common.driver_sql import SqliteStatement
from sessionkit_server.state import tables as t
from sessionkit_server.state.sql_rows import WriteKey, dialect_insert, expire_at, session_record
from sessionkit_server.state.store import Change, JsonObject, Operation, WriteTx

_S, _V = t.sessions.c, t.state_versions.c
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
_INSERT_VERSION = insert(t.state_versions)
_PRUNE_VERSIONS = delete(t.state_versions).where(
    _V.session_pk == bindparam("p_pk"), _V.version <= bindparam("p_oldest")
)
_VERSION_COLUMNS = ("session_pk", "version", "operation", "key", "value", "state", "time_us")
# The same statements on SQLite's driver connection (sessionkit_server.common.driver_sql).
_SQLITE_UPDATE_SESSION = SqliteStatement(_UPDATE_SESSION)
_SQLITE_INSERT_VERSION = SqliteStatement(_INSERT_VERSION, column_keys=_VERSION_COLUMNS)
_SQLITE_PRUNE_VERSIONS = SqliteStatement(_PRUNE_VERSIONS)


class _Scope:
    """A user or app scope row, loaded and locked on first use within a write."""

    def __init__(self, state: JsonObject) -> None:
        self.state = state
        self.original = dumps(state)

    @property
    def changed(self) -> bool:
        return dumps(self.state) != self.original


class SqlWriteTx(WriteTx):
    def __init__(self, conn: Connection, row: Mapping[str, Any], now_us: int, key: WriteKey) -> None:
        self._conn = conn
        self._sqlite = conn.dialect.name == "sqlite"
        self._key = key
        self._pk: int = row["pk"]
        self._now_us = now_us
        self.session = session_record(row)
        self.state = loads(row["state"])
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
            dialect_insert(self._conn)(table)
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
        expire = expire_at(self.session.ttl_seconds, now)
        session = {
            "p_pk": self._pk,
            "p_state": state_text,
            "p_version": version,
            "p_now": now,
            "p_expire": expire,
        }
        if self._sqlite:
            _SQLITE_UPDATE_SESSION.execute(conn, session)
        else:
            conn.execute(_UPDATE_SESSION, session)
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
        version_row = {
            "session_pk": self._pk,
            "version": version,
            "operation": int(change.operation),
            "key": change.key,
            "value": dumps(change.value) if has_value else None,
            "state": state_text,
            "time_us": now,
        }
        prune = {"p_pk": self._pk, "p_oldest": version - history_limit}
        if self._sqlite:
            _SQLITE_INSERT_VERSION.execute(conn, version_row)
            if version > history_limit:
                _SQLITE_PRUNE_VERSIONS.execute(conn, prune)
        else:
            conn.execute(_INSERT_VERSION, version_row)
            if version > history_limit:
                conn.execute(_PRUNE_VERSIONS, prune)
        self._key.record(conn, response, now)
