"""The state service's business layer (sessions, state writes with versions and compare-and-set,
idempotency, reaping); watch streams are in watch.py, events in events.py, key rules in keys.py.

Adapters (grpc_servicer.py, the HTTP gateway) convert messages and call StateService; everything
that decides behaviour is in these modules, once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, fields

from sessionkit import reasons
from sessionkit.errors import (
    FieldViolation,
    InvalidArgument,
    SessionNotFound,
    StateConflict,
)
from sessionkit.jsonvalues import JsonValue, check_json, dumps, loads
from sessionkit_server.common import checks, failpoints, paging
from sessionkit_server.common.idempotency import IDEMPOTENCY_TTL_US, check_key, key_reused
from sessionkit_server.common.identity import session_key as session_key  # re-exported
from sessionkit_server.common.timestamps import now_us as now_us  # re-exported
from sessionkit_server.state import events, watch
from sessionkit_server.state.keys import check_key as _check_key
from sessionkit_server.state.keys import merge as merge  # re-exported
from sessionkit_server.state.keys import split_key as _split
from sessionkit_server.state.limits import StateLimits
from sessionkit_server.state.store import (
    Change,
    EventRecord,
    JsonObject,
    Operation,
    SessionKey,
    SessionRecord,
    StateStore,
    VersionRecord,
    WriteTx,
)
from sessionkit_server.state.watch import ChangeNotifier
from sessionkit_server.state.watch import ChangeView as ChangeView  # re-exported

log = logging.getLogger("sessionkit.state")


#: Each kind of state write by the RPC that makes it, as IDEMPOTENCY_KEY_REUSED names it.
_WRITE_NAMES = {
    "SAVE": "SaveState",
    "SET": "SetStateValue",
    "DELETE": "DeleteStateValue",
    "CLEAR": "ClearState",
    "INCREMENT": "IncrementState",
    "APPEND": "AppendState",
    "RESTORE": "RestoreStateVersion",
}


@dataclass
class WriteResult:
    version: int
    value: JsonValue = None
    existed: bool = False
    length: int = 0
    #: The kind of write (an Operation's name) that stored this result: a repeat of its idempotency
    #: key by another kind of write is refused, never answered with this result ("" in records
    #: stored before the kind was kept: replayed as before).
    operation: str = ""

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> WriteResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(data).items() if k in known})


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    """A session's state as read: its version, and what the state is made of, ``content``: the JSON
    texts of the session's own keys, its user scope and its app scope, and the keys asked for (all
    when empty). Equal contents are equal states, whatever the session or version."""

    version: int
    content: tuple[str, str, str, tuple[str, ...]]

    def state(self) -> JsonObject:
        """The merged state (user:/app: keys prefixed), only the keys asked for when some were."""
        own, user, app, keys = self.content
        merged = merge(loads(own), loads(user), loads(app))
        if keys:
            merged = {name: merged[name] for name in keys if name in merged}
        return merged


class StateService:
    """The state service's business layer: sessions and state writes here; watch streams and events
    in watch.py and events.py."""

    def __init__(
        self, store: StateStore, limits: StateLimits | None = None, poll_interval: float = 0.5
    ) -> None:
        self.store = store
        self.limits = limits or StateLimits()
        self.poll_interval = poll_interval
        self.notifier = ChangeNotifier(
            self.limits.max_watchers_per_session, self.limits.max_watchers_per_tenant
        )
        self.closing = False

    # -- sessions ---------------------------------------------------------------------------------

    async def create_session(
        self,
        key: SessionKey,
        ttl_seconds: int | None = None,
        initial_state: JsonObject | None = None,
        get_if_exists: bool = False,
    ) -> tuple[SessionRecord, bool]:
        if ttl_seconds is not None:
            # Bounded above too: now + ttl must stay a time every store and Timestamp can hold.
            checks.duration(ttl_seconds, "ttl", low=1)
        state = self._own_state(initial_state or {}, "initial_state")
        return await self.store.create_session(key, ttl_seconds, state, get_if_exists, now_us())

    async def get_session(self, key: SessionKey) -> SessionRecord:
        record = await self.store.get_session(key, now_us())
        if record is None:
            raise SessionNotFound(
                f"session {key.session_id!r} of user {key.user_id!r} (app {key.app_name!r}) not found",
                metadata={"session_id": key.session_id, "user_id": key.user_id, "app_name": key.app_name},
            )
        return record

    async def list_sessions(
        self, app_name: str, user_id: str, page_size: int, page_token: str
    ) -> tuple[list[SessionRecord], str]:
        key = session_key(app_name, user_id, "placeholder")
        size = self._page_size(page_size, 100)
        page = await self.store.list_sessions(
            key.app_name, key.user_id, size, paging.read_token(page_token), now_us()
        )
        return page.sessions, paging.page_token(page.next_after) if page.next_after else ""

    async def delete_session(self, key: SessionKey, allow_missing: bool = False) -> bool:
        deleted = await self.store.delete_session(key)
        if not deleted and not allow_missing:
            await self.get_session(key)  # raises SessionNotFound
        self.notifier.notify(key)
        return deleted

    # -- state --------------------------------------------------------------------------------------

    async def get_state(self, key: SessionKey, keys: list[str] | None = None) -> tuple[JsonObject, int]:
        snapshot = await self.read_state(key, keys)
        return snapshot.state(), snapshot.version

    async def read_state(self, key: SessionKey, keys: Sequence[str] | None = None) -> StateSnapshot:
        """get_state's answer as the stored texts it is made of (parsed on demand): a reader that
        keeps what it made of a snapshot's ``content`` may reuse it for any equal one."""
        for i, name in enumerate(keys or ()):
            _check_key(name, f"keys[{i}]")
        record, own, user, app = await self.store.read_state_text(key, now_us())
        return StateSnapshot(record.version, (own, user, app, tuple(keys or ())))

    async def save_state(
        self,
        key: SessionKey,
        state: JsonObject,
        expected_version: int | None = None,
        idempotency_key: str = "",
        delete_keys: Sequence[str] = (),
    ) -> WriteResult:
        """Replace the session's own keys, set the user:/app: keys of ``state`` and delete those of
        ``delete_keys``: one transaction, so a refused save (a stale ``expected_version``) changes
        nothing at all."""
        checked = check_json(state, "state")
        assert isinstance(checked, dict)
        for name in checked:
            _check_key(name, f"state.{name}")
        for i, name in enumerate(delete_keys):
            field = f"delete_keys[{i}]"
            _check_key(name, field)
            if not _split(name)[0]:
                raise InvalidArgument(
                    f"invalid {field}",
                    violations=[
                        FieldViolation(field, "user: or app: keys only (leave a session key out of state)")
                    ],
                )
            if name in checked:
                raise InvalidArgument(
                    f"invalid {field}",
                    violations=[FieldViolation(field, f"{name!r} is also set in state")],
                )
        own = {k: v for k, v in checked.items() if not _split(k)[0]}
        self._check_size(own, "state")

        def apply(tx: WriteTx) -> tuple[Change, WriteResult]:
            tx.state.clear()
            tx.state.update(own)
            for name, value in checked.items():
                scope, bare = _split(name)
                if scope:
                    self._scope_state(tx, scope, bare, value)
            for name in delete_keys:
                self._target(tx, name).pop(_split(name)[1], None)
            return Change(Operation.SAVE), WriteResult(tx.next_version)

        return await self._write(key, expected_version, idempotency_key, Operation.SAVE, apply)

    async def set_value(
        self,
        key: SessionKey,
        name: str,
        value: JsonValue,
        expected_version: int | None = None,
        idempotency_key: str = "",
    ) -> WriteResult:
        _check_key(name)
        value = check_json(value, "value")

        def apply(tx: WriteTx) -> tuple[Change, WriteResult]:
            scope, bare = _split(name)
            if scope:
                self._scope_state(tx, scope, bare, value)
            else:
                tx.state[name] = value
                self._check_size(tx.state, "state")
            return Change(Operation.SET, name, value), WriteResult(tx.next_version)

        return await self._write(key, expected_version, idempotency_key, Operation.SET, apply)

    async def delete_value(
        self, key: SessionKey, name: str, expected_version: int | None = None, idempotency_key: str = ""
    ) -> WriteResult:
        _check_key(name)

        def apply(tx: WriteTx) -> tuple[Change, WriteResult]:
            target = self._target(tx, name)
            bare = _split(name)[1]
            existed = bare in target
            target.pop(bare, None)
            return Change(Operation.DELETE, name), WriteResult(tx.next_version, existed=existed)

        return await self._write(key, expected_version, idempotency_key, Operation.DELETE, apply)

    async def clear_state(
        self,
        key: SessionKey,
        expected_version: int | None = None,
        idempotency_key: str = "",
        include_user_scope: bool = False,
        include_app_scope: bool = False,
    ) -> WriteResult:
        def apply(tx: WriteTx) -> tuple[Change, WriteResult]:
            tx.state.clear()
            if include_user_scope:
                tx.user_state().clear()
            if include_app_scope:
                tx.app_state().clear()
            return Change(Operation.CLEAR), WriteResult(tx.next_version)

        return await self._write(key, expected_version, idempotency_key, Operation.CLEAR, apply)

    async def increment(
        self,
        key: SessionKey,
        name: str,
        delta: float,
        expected_version: int | None = None,
        idempotency_key: str = "",
    ) -> WriteResult:
        _check_key(name)
        delta_value = check_json(delta, "delta")

        def apply(tx: WriteTx) -> tuple[Change, WriteResult]:
            target = self._target(tx, name)
            bare = _split(name)[1]
            current = target.get(bare, 0)
            if isinstance(current, bool) or not isinstance(current, (int, float)):
                raise reasons.VALUE_NOT_NUMBER.error(
                    key=name, kind=type(current).__name__, metadata={"key": name}
                )
            assert isinstance(delta_value, (int, float))
            new_value = check_json(current + delta_value, name)
            target[bare] = new_value
            self._check_size(target, name)
            return Change(Operation.INCREMENT, name, new_value), WriteResult(tx.next_version, value=new_value)

        return await self._write(key, expected_version, idempotency_key, Operation.INCREMENT, apply)

    async def append(
        self,
        key: SessionKey,
        name: str,
        values: list[JsonValue],
        expected_version: int | None = None,
        idempotency_key: str = "",
    ) -> WriteResult:
        _check_key(name)
        checked = check_json(values, "values")
        assert isinstance(checked, list)

        def apply(tx: WriteTx) -> tuple[Change, WriteResult]:
            target = self._target(tx, name)
            bare = _split(name)[1]
            current = target.get(bare, [])
            if not isinstance(current, list):
                raise reasons.VALUE_NOT_LIST.error(
                    key=name, kind=type(current).__name__, metadata={"key": name}
                )
            new_value = [*current, *checked]
            target[bare] = new_value
            self._check_size(target, name)
            return Change(Operation.APPEND, name, new_value), WriteResult(
                tx.next_version, length=len(new_value)
            )

        return await self._write(key, expected_version, idempotency_key, Operation.APPEND, apply)

    async def restore_version(
        self, key: SessionKey, version: int, expected_version: int | None = None, idempotency_key: str = ""
    ) -> WriteResult:
        checks.count(version, "version")
        earlier = await self.store.get_version(key, version)
        if earlier is None:
            await self.get_session(key)
            raise reasons.VERSION_NOT_FOUND.error(
                version=version,
                session_id=key.session_id,
                kept=self.limits.history_limit,
                metadata={"version": str(version)},
            )

        def apply(tx: WriteTx) -> tuple[Change, WriteResult]:
            tx.state.clear()
            tx.state.update(earlier.state)
            return Change(Operation.RESTORE, "", version), WriteResult(tx.next_version)

        return await self._write(key, expected_version, idempotency_key, Operation.RESTORE, apply)

    async def list_versions(
        self, key: SessionKey, page_size: int, page_token: str
    ) -> tuple[list[VersionRecord], str]:
        size = self._page_size(page_size, 50)
        token = paging.read_token(page_token)
        before = int(token) if token and token.isdigit() else None
        if token and before is None:
            raise InvalidArgument(
                "invalid page_token", violations=[FieldViolation("page_token", "not a version")]
            )
        await self.get_session(key)
        versions = await self.store.list_versions(key, size + 1, before)
        more = len(versions) > size
        versions = versions[:size]
        return versions, paging.page_token(str(versions[-1].version)) if more else ""

    # -- watch and events (watch.py, events.py) -----------------------------------------------------

    def watch(self, key: SessionKey, since_version: int = 0) -> AsyncIterator[ChangeView]:
        """The current state, then every change as it is committed, until the session is deleted."""
        return watch.watch(self, key, since_version)

    async def append_event(
        self,
        key: SessionKey,
        role: str,
        content: str,
        author: str = "",
        metadata: JsonObject | None = None,
        idempotency_key: str = "",
    ) -> EventRecord:
        return await events.append_event(self, key, role, content, author, metadata, idempotency_key)

    async def list_events(
        self, key: SessionKey, page_size: int = 0, page_token: str = "", tail: int = 0, author: str = ""
    ) -> tuple[list[EventRecord], str]:
        return await events.list_events(self, key, page_size, page_token, tail, author)

    def begin_shutdown(self) -> None:
        """End every watch stream (UNAVAILABLE: clients reconnect), so a drain never waits on them."""
        self.closing = True
        self.notifier.notify_all()

    # -- maintenance --------------------------------------------------------------------------------

    async def reap_forever(self, interval: float) -> None:
        while True:
            try:
                now = now_us()
                reaped = await self.store.reap(now, now - IDEMPOTENCY_TTL_US)
                if reaped:
                    log.info("reaped expired sessions", extra={"count": reaped})
            except Exception:  # keep reaping after a transient database error
                log.exception("reaper failed")
            await asyncio.sleep(interval)

    # -- helpers ------------------------------------------------------------------------------------

    async def _write(
        self,
        key: SessionKey,
        expected_version: int | None,
        idempotency_key: str,
        operation: Operation,
        apply: Callable[[WriteTx], tuple[Change, WriteResult]],
    ) -> WriteResult:
        if idempotency_key:
            check_key(idempotency_key)  # the ledger's rule: what its table can hold
        if expected_version is not None:
            checks.count(expected_version, "expected_version")

        def run(tx: WriteTx) -> WriteResult:
            if tx.replayed_response is not None:
                replayed = WriteResult.decode(tx.replayed_response)
                if replayed.operation and replayed.operation != operation.name:
                    # Another kind of write's result is not this call's answer (an increment
                    # answered with a set's result has no value): the key was reused.
                    first = _WRITE_NAMES.get(replayed.operation, replayed.operation)
                    raise key_reused(idempotency_key, first, _WRITE_NAMES[operation.name])
                return replayed
            if expected_version is not None and expected_version != tx.session.version:
                raise StateConflict(
                    f"session {key.session_id!r} is at version {tx.session.version}, "
                    f"not the expected {expected_version}",
                    metadata={
                        "current_version": str(tx.session.version),
                        "expected_version": str(expected_version),
                    },
                )
            change, result = apply(tx)
            result.operation = operation.name
            tx.commit(change, result.encode())
            return result

        result = await self.store.write(key, idempotency_key, now_us(), run)
        failpoints.hit("state.after_write_commit")  # committed, not yet answered: the retry must replay
        self.notifier.notify(key)
        return result

    @staticmethod
    def _target(tx: WriteTx, name: str) -> JsonObject:
        scope = _split(name)[0]
        if scope == "user":
            return tx.user_state()
        if scope == "app":
            return tx.app_state()
        return tx.state

    def _scope_state(self, tx: WriteTx, scope: str, bare: str, value: JsonValue) -> None:
        target = tx.user_state() if scope == "user" else tx.app_state()
        target[bare] = value
        self._check_size(target, f"{scope}:")

    def _own_state(self, state: JsonObject, field: str) -> JsonObject:
        checked = check_json(state, field)
        assert isinstance(checked, dict)
        for name in checked:
            _check_key(name, f"{field}.{name}")
            if _split(name)[0]:
                raise InvalidArgument(
                    f"invalid {field}",
                    violations=[
                        FieldViolation(f"{field}.{name}", "initial_state takes the session's own keys only")
                    ],
                )
        self._check_size(checked, field)
        return checked

    def _check_size(self, state: JsonObject, what: str) -> None:
        size = len(dumps(state).encode())
        if size > self.limits.max_state_bytes:
            raise reasons.STATE_TOO_LARGE.error(
                what=what,
                size=size,
                limit=self.limits.max_state_bytes,
                metadata={"limit_bytes": str(self.limits.max_state_bytes), "size_bytes": str(size)},
            )

    def _page_size(self, size: int, default: int) -> int:
        return paging.page_size(size, default, self.limits.max_page_size)
