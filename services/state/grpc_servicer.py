"""gRPC adapter of the state service: converts sessionkit.v1 messages and calls StateService."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from sessionkit.jsonvalues import from_list_value, from_struct, from_value, to_struct, to_value
from sessionkit.v1 import common_pb2, state_pb2, state_pb2_grpc
from sessionkit_server.common import checks
from sessionkit_server.state.service import ChangeView, StateService, StateSnapshot, session_key
from sessionkit_server.state.store import EventRecord, SessionRecord, VersionRecord

Context = Any  # grpc.aio.ServicerContext


def _ts(micros: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    # Clamped: a session stored before TTLs were bounded may expire after the year 9999, which no
    # Timestamp can say; it reads as expiring at the end of the range instead of failing every read.
    ts.FromMicroseconds(min(max(micros, checks.MIN_TIMESTAMP_US), checks.MAX_TIMESTAMP_US))
    return ts


#: google.protobuf.Duration's largest number of seconds (about 10,000 years).
MAX_PROTO_SECONDS = 315_576_000_000


def session_message(record: SessionRecord) -> state_pb2.Session:
    k = record.key
    message = state_pb2.Session(
        ref=common_pb2.SessionRef(app_name=k.app_name, user_id=k.user_id, session_id=k.session_id),
        create_time=_ts(record.create_us),
        update_time=_ts(record.update_us),
        version=record.version,
        event_count=record.event_count,
    )
    if record.ttl_seconds is not None:
        message.ttl.CopyFrom(duration_pb2.Duration(seconds=min(record.ttl_seconds, MAX_PROTO_SECONDS)))
    if record.expire_us is not None:
        message.expire_time.CopyFrom(_ts(record.expire_us))
    return message


def event_message(event: EventRecord) -> state_pb2.Event:
    return state_pb2.Event(
        id=event.id,
        role=event.role,
        content=event.content,
        author=event.author,
        metadata=to_struct(event.metadata),
        create_time=_ts(event.create_us),
    )


def change_message(change: ChangeView) -> state_pb2.StateChange:
    message = state_pb2.StateChange(
        version=change.version,
        operation=int(change.operation),  # type: ignore[arg-type]
        key=change.key,
        state=to_struct(change.state),
        time=_ts(change.time_us),
    )
    if change.value is not None or change.key:
        message.value.CopyFrom(to_value(change.value))
    return message


def version_message(version: VersionRecord) -> state_pb2.StateVersion:
    return state_pb2.StateVersion(
        version=version.version,
        operation=int(version.operation),  # type: ignore[arg-type]
        key=version.key,
        state=to_struct(version.state),
        time=_ts(version.time_us),
    )


def _key(ref: common_pb2.SessionRef, generate: bool = False) -> Any:
    return session_key(ref.app_name, ref.user_id, ref.session_id, generate=generate)


def _expected(request: Any) -> int | None:
    return request.expected_version if request.HasField("expected_version") else None


class EncodedStates:
    """GetState's replies as bytes, the state part kept per snapshot content (LRU, bounded in bytes).

    Why: building a reply (parse three JSON texts, merge, build a Struct, serialize it) was most of
    a read's own CPU, and most reads find a state unchanged since the last one. An entry is keyed by
    the stored texts themselves, never by session and version: a read reuses an encoding only for
    the very state it read (from any replica's write), so there is nothing to invalidate. The reply
    is that encoding followed by the version's field (two serialized messages of one type
    concatenated parse as one, protobuf's merge rule)."""

    def __init__(self, max_bytes: int = 32 << 20, max_entry_bytes: int = 256 << 10) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self._entries: OrderedDict[tuple[str, str, str, tuple[str, ...]], bytes] = OrderedDict()
        self._bytes = 0

    def encode(self, snapshot: StateSnapshot) -> bytes:
        version = state_pb2.GetStateResponse(version=snapshot.version).SerializeToString()
        content = snapshot.content
        encoded = self._entries.get(content)
        if encoded is not None:
            self._entries.move_to_end(content)
            return encoded + version
        encoded = state_pb2.GetStateResponse(state=to_struct(snapshot.state())).SerializeToString()
        size = _size(content) + len(encoded)
        if size <= self.max_entry_bytes:
            self._entries[content] = encoded
            self._bytes += size
            while self._bytes > self.max_bytes:
                old_content, old = self._entries.popitem(last=False)
                self._bytes -= _size(old_content) + len(old)
        return encoded + version


def _size(content: tuple[str, str, str, tuple[str, ...]]) -> int:
    own, user, app, keys = content
    return len(own) + len(user) + len(app) + sum(len(k) for k in keys)


class StateServicer(state_pb2_grpc.StateServiceServicer):
    def __init__(self, service: StateService) -> None:
        self.service = service
        #: GetState answers with bytes: the server's interceptor (ErrorAndLogInterceptor) passes a
        #: bytes reply through its serializer as the encoded message.
        self.state_replies = EncodedStates()

    async def CreateSession(self, request: state_pb2.CreateSessionRequest, context: Context) -> Any:
        ttl = int(checks.duration_proto(request.ttl, "ttl")) if request.HasField("ttl") else None
        initial = from_struct(request.initial_state) if request.HasField("initial_state") else None
        record, created = await self.service.create_session(
            _key(request.session, generate=True), ttl, initial, request.get_if_exists
        )
        return state_pb2.CreateSessionResponse(session=session_message(record), created=created)

    async def GetSession(self, request: state_pb2.GetSessionRequest, context: Context) -> Any:
        record = await self.service.get_session(_key(request.session))
        return state_pb2.GetSessionResponse(session=session_message(record))

    async def ListSessions(self, request: state_pb2.ListSessionsRequest, context: Context) -> Any:
        records, token = await self.service.list_sessions(
            request.app_name, request.user_id, request.page_size, request.page_token
        )
        return state_pb2.ListSessionsResponse(
            sessions=[session_message(r) for r in records], next_page_token=token
        )

    async def DeleteSession(self, request: state_pb2.DeleteSessionRequest, context: Context) -> Any:
        deleted = await self.service.delete_session(_key(request.session), request.allow_missing)
        return state_pb2.DeleteSessionResponse(deleted=deleted)

    async def GetState(self, request: state_pb2.GetStateRequest, context: Context) -> Any:
        snapshot = await self.service.read_state(_key(request.session), request.keys)
        return self.state_replies.encode(snapshot)

    async def SaveState(self, request: state_pb2.SaveStateRequest, context: Context) -> Any:
        result = await self.service.save_state(
            _key(request.session),
            from_struct(request.state),
            _expected(request),
            request.idempotency_key,
            list(request.delete_keys),
        )
        return state_pb2.SaveStateResponse(version=result.version)

    async def SetStateValue(self, request: state_pb2.SetStateValueRequest, context: Context) -> Any:
        result = await self.service.set_value(
            _key(request.session),
            request.key,
            from_value(request.value),
            _expected(request),
            request.idempotency_key,
        )
        return state_pb2.SetStateValueResponse(version=result.version)

    async def DeleteStateValue(self, request: state_pb2.DeleteStateValueRequest, context: Context) -> Any:
        result = await self.service.delete_value(
            _key(request.session), request.key, _expected(request), request.idempotency_key
        )
        return state_pb2.DeleteStateValueResponse(version=result.version, existed=result.existed)

    async def ClearState(self, request: state_pb2.ClearStateRequest, context: Context) -> Any:
        result = await self.service.clear_state(
            _key(request.session),
            _expected(request),
            request.idempotency_key,
            request.include_user_scope,
            request.include_app_scope,
        )
        return state_pb2.ClearStateResponse(version=result.version)

    async def IncrementState(self, request: state_pb2.IncrementStateRequest, context: Context) -> Any:
        result = await self.service.increment(
            _key(request.session), request.key, request.delta, _expected(request), request.idempotency_key
        )
        assert isinstance(result.value, (int, float))
        return state_pb2.IncrementStateResponse(version=result.version, value=result.value)

    async def AppendState(self, request: state_pb2.AppendStateRequest, context: Context) -> Any:
        result = await self.service.append(
            _key(request.session),
            request.key,
            from_list_value(request.values),
            _expected(request),
            request.idempotency_key,
        )
        return state_pb2.AppendStateResponse(version=result.version, length=result.length)

    async def WatchState(
        self, request: state_pb2.WatchStateRequest, context: Context
    ) -> AsyncIterator[state_pb2.StateChange]:
        async for change in self.service.watch(_key(request.session), request.since_version):
            # A change is shared by the session's watchers: encode it once for all of them.
            if not isinstance(change.encoded, state_pb2.StateChange):
                change.encoded = change_message(change)
            yield change.encoded

    async def ListStateVersions(self, request: state_pb2.ListStateVersionsRequest, context: Context) -> Any:
        versions, token = await self.service.list_versions(
            _key(request.session), request.page_size, request.page_token
        )
        return state_pb2.ListStateVersionsResponse(
            versions=[version_message(v) for v in versions], next_page_token=token
        )

    async def RestoreStateVersion(
        self, request: state_pb2.RestoreStateVersionRequest, context: Context
    ) -> Any:
        result = await self.service.restore_version(
            _key(request.session), request.version, _expected(request), request.idempotency_key
        )
        return state_pb2.RestoreStateVersionResponse(version=result.version)

    async def AppendEvent(self, request: state_pb2.AppendEventRequest, context: Context) -> Any:
        event = request.event
        record = await self.service.append_event(
            _key(request.session),
            event.role,
            event.content,
            event.author,
            from_struct(event.metadata),
            request.idempotency_key,
        )
        return state_pb2.AppendEventResponse(event=event_message(record))

    async def ListEvents(self, request: state_pb2.ListEventsRequest, context: Context) -> Any:
        events, token = await self.service.list_events(
            _key(request.session), request.page_size, request.page_token, request.tail, request.author
        )
        return state_pb2.ListEventsResponse(events=[event_message(e) for e in events], next_page_token=token)
