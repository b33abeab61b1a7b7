"""Typed async client of the state service: Python values in and out, one method per RPC.

Used by AsyncSession, the CLI and the gateway; every call goes through Transport (retries,
typed errors). Writes take an idempotency key, generated here when the caller gives none, and kept
across retries so a retried write is applied exactly once.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf import duration_pb2

from sessionkit.errors import InvalidArgument
from sessionkit.jsonvalues import (
    JsonValue,
    check_json,
    from_struct,
    from_value,
    to_list_value,
    to_struct,
    to_value,
)
from sessionkit.transport import Transport
from sessionkit.v1 import common_pb2, state_pb2, state_pb2_grpc

JsonObject = dict[str, JsonValue]
Stub = state_pb2_grpc.StateServiceStub


def _time(ts: Any) -> datetime | None:
    if not ts.seconds and not ts.nanos:
        return None
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC)


@dataclass(frozen=True)
class SessionInfo:
    app_name: str
    user_id: str
    session_id: str
    create_time: datetime | None
    update_time: datetime | None
    expire_time: datetime | None
    ttl_seconds: int | None
    version: int
    event_count: int

    @classmethod
    def from_message(cls, m: state_pb2.Session) -> SessionInfo:
        return cls(
            m.ref.app_name,
            m.ref.user_id,
            m.ref.session_id,
            _time(m.create_time),
            _time(m.update_time),
            _time(m.expire_time),
            m.ttl.seconds if m.HasField("ttl") else None,
            m.version,
            m.event_count,
        )


@dataclass(frozen=True)
class Event:
    id: int
    role: str
    content: str
    author: str
    metadata: JsonObject
    create_time: datetime | None

    @classmethod
    def from_message(cls, m: state_pb2.Event) -> Event:
        return cls(m.id, m.role, m.content, m.author, from_struct(m.metadata), _time(m.create_time))


@dataclass(frozen=True)
class StateChange:
    version: int
    operation: str
    key: str
    value: JsonValue
    state: JsonObject
    time: datetime | None

    @classmethod
    def from_message(cls, m: state_pb2.StateChange) -> StateChange:
        return cls(
            m.version,
            state_pb2.StateChange.Operation.Name(m.operation),
            m.key,
            from_value(m.value) if m.HasField("value") else None,
            from_struct(m.state),
            _time(m.time),
        )


@dataclass(frozen=True)
class StateVersion:
    version: int
    operation: str
    key: str
    state: JsonObject
    time: datetime | None


@dataclass
class SessionRef:
    app_name: str
    user_id: str
    session_id: str
    message: common_pb2.SessionRef = field(init=False)

    def __post_init__(self) -> None:
        self.message = common_pb2.SessionRef(
            app_name=self.app_name, user_id=self.user_id, session_id=self.session_id
        )


def _key(idempotency_key: str | None) -> str:
    return idempotency_key or uuid.uuid4().hex


class StateClient:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def _call(self, method: str, request: Any, *, idempotent: bool = True) -> Any:
        return await self.transport.unary("state", Stub, method, request, idempotent=idempotent)

    async def create_session(
        self,
        ref: SessionRef,
        *,
        ttl_seconds: int | None = None,
        initial_state: JsonObject | None = None,
        get_if_exists: bool = True,
    ) -> tuple[SessionInfo, bool]:
        request = state_pb2.CreateSessionRequest(session=ref.message, get_if_exists=get_if_exists)
        if ttl_seconds is not None:
            request.ttl.CopyFrom(duration_pb2.Duration(seconds=ttl_seconds))
        if initial_state is not None:
            request.initial_state.CopyFrom(to_struct(_object(initial_state, "initial_state")))
        # No idempotency key in the proto: repeated only when a repeat is harmless (get_if_exists).
        reply = await self._call("CreateSession", request, idempotent=get_if_exists)
        return SessionInfo.from_message(reply.session), reply.created

    async def get_session(self, ref: SessionRef) -> SessionInfo:
        reply = await self._call("GetSession", state_pb2.GetSessionRequest(session=ref.message))
        return SessionInfo.from_message(reply.session)

    async def list_sessions(
        self, app_name: str, user_id: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[SessionInfo], str]:
        reply = await self._call(
            "ListSessions",
            state_pb2.ListSessionsRequest(
                app_name=app_name, user_id=user_id, page_size=page_size, page_token=page_token
            ),
        )
        return [SessionInfo.from_message(s) for s in reply.sessions], reply.next_page_token

    async def iter_sessions(self, app_name: str, user_id: str) -> AsyncIterator[SessionInfo]:
        token = ""
        while True:
            sessions, token = await self.list_sessions(app_name, user_id, 500, token)
            for info in sessions:
                yield info
            if not token:
                return

    async def delete_session(self, ref: SessionRef, allow_missing: bool = False) -> bool:
        reply = await self._call(
            "DeleteSession",
            state_pb2.DeleteSessionRequest(session=ref.message, allow_missing=allow_missing),
            idempotent=allow_missing,
        )
        return bool(reply.deleted)

    async def get_state(self, ref: SessionRef, keys: list[str] | None = None) -> tuple[JsonObject, int]:
        reply = await self._call("GetState", state_pb2.GetStateRequest(session=ref.message, keys=keys or []))
        return from_struct(reply.state), reply.version

    async def save_state(
        self,
        ref: SessionRef,
        state: JsonObject,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        delete_keys: Sequence[str] = (),
    ) -> int:
        """Replace the session's keys with ``state`` (its user:/app: keys are set), deleting the
        user:/app: keys of ``delete_keys``, in one version-checked write."""
        request = state_pb2.SaveStateRequest(
            session=ref.message,
            state=to_struct(_object(state, "state")),
            expected_version=expected_version,
            idempotency_key=_key(idempotency_key),
            delete_keys=list(delete_keys),
        )
        return int((await self._call("SaveState", request)).version)

    async def set_value(
        self,
        ref: SessionRef,
        key: str,
        value: Any,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        request = state_pb2.SetStateValueRequest(
            session=ref.message,
            key=key,
            value=to_value(check_json(value, key)),
            expected_version=expected_version,
            idempotency_key=_key(idempotency_key),
        )
        return int((await self._call("SetStateValue", request)).version)

    async def delete_value(
        self,
        ref: SessionRef,
        key: str,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[int, bool]:
        request = state_pb2.DeleteStateValueRequest(
            session=ref.message,
            key=key,
            expected_version=expected_version,
            idempotency_key=_key(idempotency_key),
        )
        reply = await self._call("DeleteStateValue", request)
        return int(reply.version), bool(reply.existed)

    async def clear_state(
        self,
        ref: SessionRef,
        expected_version: int | None = None,
        *,
        include_user_scope: bool = False,
        include_app_scope: bool = False,
        idempotency_key: str | None = None,
    ) -> int:
        request = state_pb2.ClearStateRequest(
            session=ref.message,
            expected_version=expected_version,
            idempotency_key=_key(idempotency_key),
            include_user_scope=include_user_scope,
            include_app_scope=include_app_scope,
        )
        return int((await self._call("ClearState", request)).version)

    async def increment(
        self,
        ref: SessionRef,
        key: str,
        delta: float = 1,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[int, int | float]:
        checked = check_json(delta, "delta")
        if isinstance(checked, bool) or not isinstance(checked, (int, float)):
            raise InvalidArgument(f"delta must be a number, not {type(delta).__name__}")
        request = state_pb2.IncrementStateRequest(
            session=ref.message,
            key=key,
            delta=float(checked),
            expected_version=expected_version,
            idempotency_key=_key(idempotency_key),
        )
        reply = await self._call("IncrementState", request)
        value = reply.value
        return int(reply.version), int(value) if float(value).is_integer() else value

    async def append(
        self,
        ref: SessionRef,
        key: str,
        values: list[Any],
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[int, int]:
        checked = check_json(list(values), "values")
        assert isinstance(checked, list)
        request = state_pb2.AppendStateRequest(
            session=ref.message,
            key=key,
            values=to_list_value(checked),
            expected_version=expected_version,
            idempotency_key=_key(idempotency_key),
        )
        reply = await self._call("AppendState", request)
        return int(reply.version), int(reply.length)

    async def watch(self, ref: SessionRef, since_version: int = 0) -> AsyncIterator[StateChange]:
        request = state_pb2.WatchStateRequest(session=ref.message, since_version=since_version)
        async for message in self.transport.stream("state", Stub, "WatchState", request, prompt_start=True):
            yield StateChange.from_message(message)

    async def list_versions(
        self, ref: SessionRef, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[StateVersion], str]:
        reply = await self._call(
            "ListStateVersions",
            state_pb2.ListStateVersionsRequest(
                session=ref.message, page_size=page_size, page_token=page_token
            ),
        )
        versions = [
            StateVersion(
                v.version,
                state_pb2.StateChange.Operation.Name(v.operation),
                v.key,
                from_struct(v.state),
                _time(v.time),
            )
            for v in reply.versions
        ]
        return versions, reply.next_page_token

    async def restore_version(
        self,
        ref: SessionRef,
        version: int,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        request = state_pb2.RestoreStateVersionRequest(
            session=ref.message,
            version=version,
            expected_version=expected_version,
            idempotency_key=_key(idempotency_key),
        )
        return int((await self._call("RestoreStateVersion", request)).version)

    async def append_event(
        self,
        ref: SessionRef,
        role: str,
        content: str,
        author: str = "",
        metadata: JsonObject | None = None,
        idempotency_key: str | None = None,
    ) -> Event:
        event = state_pb2.Event(
            role=role, content=content, author=author, metadata=to_struct(_object(metadata or {}, "metadata"))
        )
        reply = await self._call(
            "AppendEvent",
            state_pb2.AppendEventRequest(
                session=ref.message, event=event, idempotency_key=_key(idempotency_key)
            ),
        )
        return Event.from_message(reply.event)

    async def list_events(
        self, ref: SessionRef, page_size: int = 0, page_token: str = "", tail: int = 0, author: str = ""
    ) -> tuple[list[Event], str]:
        reply = await self._call(
            "ListEvents",
            state_pb2.ListEventsRequest(
                session=ref.message, page_size=page_size, page_token=page_token, tail=tail, author=author
            ),
        )
        return [Event.from_message(e) for e in reply.events], reply.next_page_token


def _object(value: Any, field: str) -> JsonObject:
    checked = check_json(value, field)
    if not isinstance(checked, dict):
        raise InvalidArgument(f"{field} must be a dict of JSON values, not {type(value).__name__}")
    return checked
