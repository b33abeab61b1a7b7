"""REST over the state service: sessions, state (values, versions, the watch stream) and events; each
route converts the HTTP request to one SDK client call and its result to the response model."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from sessionkit import reasons
from sessionkit.errors import FieldViolation, InvalidArgument
from sessionkit.state_client import SessionInfo, StateChange
from sessionkit_server.gateway.deps import (
    Caller,
    CallerDep,
    IdempotencyKey,
    PageSize,
    PageToken,
    SessionIdPath,
    UserQuery,
)
from sessionkit_server.gateway.models import (
    INT64_MAX,
    CreatedSession,
    CreateSession,
    Deleted,
    DeletedValue,
    EventIn,
    EventList,
    EventOut,
    PatchedValue,
    PatchValue,
    SaveState,
    SessionList,
    SessionOut,
    SetValue,
    StateOut,
    StateVersionOut,
    ValueOut,
    Version,
    VersionList,
)
from sessionkit_server.gateway.sse import event_schema, event_stream
from sessionkit_server.gateway.watch_hub import WatchHub, change_event, failure_event

KeyPath = Annotated[
    str,
    Path(min_length=1, max_length=256, description="State key (may contain '/', sent as it is or as %2F)"),
]
ExpectedVersion = Annotated[
    int | None, Query(ge=0, le=INT64_MAX, description="Compare-and-set: 409 when stale")
]
log = logging.getLogger("sessionkit.gateway")

WATCH_DESCRIPTION = (
    "Server-Sent Events: one `event: change` per state change, data "
    '{"version", "operation", "key", "value", "state", "time"} (operation SNAPSHOT first with '
    "since_version=0), for as long as the client stays connected; a failure after the stream started "
    "is one `event: error` with the error body."
)


def _session(info: SessionInfo, caller: Caller) -> SessionOut:
    return SessionOut(
        app=caller.app,
        user_id=info.user_id,
        session_id=info.session_id,
        create_time=info.create_time,
        update_time=info.update_time,
        expire_time=info.expire_time,
        ttl_seconds=info.ttl_seconds,
        version=info.version,
        event_count=info.event_count,
    )


def add(router: APIRouter) -> None:
    # -- sessions ----------------------------------------------------------------------------------

    @router.post(
        "/v1/sessions",
        response_model=CreatedSession,
        status_code=201,
        tags=["sessions"],
        responses={200: {"model": CreatedSession, "description": "The session existed (created: false)"}},
    )
    async def create_session(
        body: CreateSession, caller: CallerDep, response: Response, user_id: UserQuery = "default"
    ) -> CreatedSession:
        """CreateSession (get_if_exists by default: 200 with created=false for an existing session)."""
        info, created = await caller.clients.state.create_session(
            caller.ref(user_id, body.session_id or ""),
            ttl_seconds=body.ttl_seconds,
            initial_state=body.state,
            get_if_exists=body.get_if_exists,
        )
        if not created:
            response.status_code = 200
        return CreatedSession(**_session(info, caller).model_dump(), created=created)

    @router.get("/v1/sessions", response_model=SessionList, tags=["sessions"])
    async def list_sessions(
        caller: CallerDep, user_id: UserQuery = "default", page_size: PageSize = 0, page_token: PageToken = ""
    ) -> SessionList:
        """ListSessions of one user."""
        infos, token = await caller.clients.state.list_sessions(
            caller.app_name, user_id, page_size, page_token
        )
        return SessionList(sessions=[_session(i, caller) for i in infos], next_page_token=token)

    @router.get("/v1/sessions/{session_id}", response_model=SessionOut, tags=["sessions"])
    async def get_session(
        session_id: SessionIdPath, caller: CallerDep, user_id: UserQuery = "default"
    ) -> SessionOut:
        """GetSession."""
        return _session(await caller.clients.state.get_session(caller.ref(user_id, session_id)), caller)

    @router.delete("/v1/sessions/{session_id}", response_model=Deleted, tags=["sessions"])
    async def delete_session(
        session_id: SessionIdPath,
        caller: CallerDep,
        user_id: UserQuery = "default",
        allow_missing: bool = False,
    ) -> Deleted:
        """DeleteSession with its state, events and history."""
        deleted = await caller.clients.state.delete_session(caller.ref(user_id, session_id), allow_missing)
        return Deleted(deleted=deleted)

    # -- state -------------------------------------------------------------------------------------

    @router.get("/v1/sessions/{session_id}/state", response_model=StateOut, tags=["state"])
    async def get_state(
        session_id: SessionIdPath,
        caller: CallerDep,
        user_id: UserQuery = "default",
        keys: Annotated[list[str] | None, Query(description="Only these keys (repeatable)")] = None,
    ) -> StateOut:
        """GetState: the session's keys merged with its user: and app: keys."""
        state, version = await caller.clients.state.get_state(caller.ref(user_id, session_id), keys)
        return StateOut(state=state, version=version)

    @router.put("/v1/sessions/{session_id}/state", response_model=Version, tags=["state"])
    async def save_state(
        session_id: SessionIdPath,
        body: SaveState,
        caller: CallerDep,
        user_id: UserQuery = "default",
        idempotency_key: IdempotencyKey = None,
    ) -> Version:
        """SaveState: replace the session's state (and delete delete_keys), in one write."""
        version = await caller.clients.state.save_state(
            caller.ref(user_id, session_id),
            body.state,
            body.expected_version,
            idempotency_key,
            body.delete_keys,
        )
        return Version(version=version)

    @router.delete("/v1/sessions/{session_id}/state", response_model=Version, tags=["state"])
    async def clear_state(
        session_id: SessionIdPath,
        caller: CallerDep,
        user_id: UserQuery = "default",
        expected_version: ExpectedVersion = None,
        include_user_scope: bool = False,
        include_app_scope: bool = False,
        idempotency_key: IdempotencyKey = None,
    ) -> Version:
        """ClearState."""
        version = await caller.clients.state.clear_state(
            caller.ref(user_id, session_id),
            expected_version,
            include_user_scope=include_user_scope,
            include_app_scope=include_app_scope,
            idempotency_key=idempotency_key,
        )
        return Version(version=version)

    @router.get("/v1/sessions/{session_id}/state/{key:path}", response_model=ValueOut, tags=["state"])
    async def get_value(
        session_id: SessionIdPath, key: KeyPath, caller: CallerDep, user_id: UserQuery = "default"
    ) -> ValueOut:
        """GetState of one key; 404 (STATE_KEY_NOT_FOUND) when it is not set."""
        state, version = await caller.clients.state.get_state(caller.ref(user_id, session_id), [key])
        if key not in state:
            raise reasons.STATE_KEY_NOT_FOUND.error(key=key, session_id=session_id)
        return ValueOut(key=key, value=state[key], version=version)

    @router.put("/v1/sessions/{session_id}/state/{key:path}", response_model=Version, tags=["state"])
    async def set_value(
        session_id: SessionIdPath,
        key: KeyPath,
        body: SetValue,
        caller: CallerDep,
        user_id: UserQuery = "default",
        idempotency_key: IdempotencyKey = None,
    ) -> Version:
        """SetStateValue."""
        version = await caller.clients.state.set_value(
            caller.ref(user_id, session_id), key, body.value, body.expected_version, idempotency_key
        )
        return Version(version=version)

    @router.patch("/v1/sessions/{session_id}/state/{key:path}", response_model=PatchedValue, tags=["state"])
    async def patch_value(
        session_id: SessionIdPath,
        key: KeyPath,
        body: PatchValue,
        caller: CallerDep,
        user_id: UserQuery = "default",
        idempotency_key: IdempotencyKey = None,
    ) -> PatchedValue:
        """IncrementState ({"increment": n}) or AppendState ({"append": [values]})."""
        ref = caller.ref(user_id, session_id)
        if (body.increment is None) == (body.append is None):
            raise InvalidArgument(
                "give exactly one of increment and append",
                violations=[FieldViolation("body", "exactly one of increment, append")],
            )
        if body.increment is not None:
            version, value = await caller.clients.state.increment(
                ref, key, body.increment, body.expected_version, idempotency_key
            )
            return PatchedValue(version=version, value=value)
        assert body.append is not None
        version, length = await caller.clients.state.append(
            ref, key, body.append, body.expected_version, idempotency_key
        )
        return PatchedValue(version=version, length=length)

    @router.delete("/v1/sessions/{session_id}/state/{key:path}", response_model=DeletedValue, tags=["state"])
    async def delete_value(
        session_id: SessionIdPath,
        key: KeyPath,
        caller: CallerDep,
        user_id: UserQuery = "default",
        expected_version: ExpectedVersion = None,
        idempotency_key: IdempotencyKey = None,
    ) -> DeletedValue:
        """DeleteStateValue."""
        version, existed = await caller.clients.state.delete_value(
            caller.ref(user_id, session_id), key, expected_version, idempotency_key
        )
        return DeletedValue(version=version, existed=existed)

    # Versions and the watch stream are not under /state/: every path below /state/ is a key.

    @router.get("/v1/sessions/{session_id}/versions", response_model=VersionList, tags=["state"])
    async def list_versions(
        session_id: SessionIdPath,
        caller: CallerDep,
        user_id: UserQuery = "default",
        page_size: PageSize = 0,
        page_token: PageToken = "",
    ) -> VersionList:
        """ListStateVersions: earlier versions of the session's own keys, newest first."""
        versions, token = await caller.clients.state.list_versions(
            caller.ref(user_id, session_id), page_size, page_token
        )
        return VersionList(versions=[StateVersionOut(**vars(v)) for v in versions], next_page_token=token)

    @router.post(
        "/v1/sessions/{session_id}/versions/{version}/restore", response_model=Version, tags=["state"]
    )
    async def restore_version(
        session_id: SessionIdPath,
        version: Annotated[
            int, Path(ge=1, le=INT64_MAX, description="A retained version (see GET .../versions)")
        ],
        caller: CallerDep,
        user_id: UserQuery = "default",
        expected_version: ExpectedVersion = None,
        idempotency_key: IdempotencyKey = None,
    ) -> Version:
        """RestoreStateVersion: that version's keys become the current state, as a new version
        (404 VERSION_NOT_FOUND when it is no longer retained)."""
        new_version = await caller.clients.state.restore_version(
            caller.ref(user_id, session_id), version, expected_version, idempotency_key
        )
        return Version(version=new_version)

    @router.get(
        "/v1/sessions/{session_id}/watch",
        tags=["state"],
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {"text/event-stream": {"schema": event_schema("change", "error")}},
                "description": WATCH_DESCRIPTION,
            }
        },
    )
    async def watch_state(
        request: Request,
        session_id: SessionIdPath,
        caller: CallerDep,
        user_id: UserQuery = "default",
        since_version: Annotated[
            int, Query(ge=0, le=INT64_MAX, description="0: a SNAPSHOT of the current state first")
        ] = 0,
    ) -> StreamingResponse:
        """WatchState as Server-Sent Events."""
        heartbeat = request.app.state.gateway.settings.sse_heartbeat_seconds
        ref = caller.ref(user_id, session_id)
        if since_version == 0:
            # The common case shares one upstream call per session among this gateway's watchers.
            hub: WatchHub = request.app.state.gateway.watches
            events = await hub.watch(caller.principal.key_id, ref, caller.clients.state)
            return event_stream(events, heartbeat)
        changes = caller.clients.state.watch(ref, since_version)
        try:
            # Read before answering, so a refused watch (no session, no key) is a plain HTTP error.
            first = await anext(changes)
        except BaseException:
            await changes.aclose()  # type: ignore[attr-defined]
            raise
        return event_stream(_watch_stream(first, changes), heartbeat)

    # -- events ------------------------------------------------------------------------------------

    @router.get("/v1/sessions/{session_id}/events", response_model=EventList, tags=["events"])
    async def list_events(
        session_id: SessionIdPath,
        caller: CallerDep,
        user_id: UserQuery = "default",
        page_size: PageSize = 0,
        page_token: PageToken = "",
        tail: Annotated[int, Query(ge=0, le=100_000, description="Only the last n events")] = 0,
        author: Annotated[str, Query(max_length=256)] = "",
    ) -> EventList:
        """ListEvents, oldest first."""
        events, token = await caller.clients.state.list_events(
            caller.ref(user_id, session_id), page_size, page_token, tail, author
        )
        return EventList(events=[EventOut(**vars(e)) for e in events], next_page_token=token)

    @router.post(
        "/v1/sessions/{session_id}/events", response_model=EventOut, status_code=201, tags=["events"]
    )
    async def append_event(
        session_id: SessionIdPath,
        body: EventIn,
        caller: CallerDep,
        user_id: UserQuery = "default",
        idempotency_key: IdempotencyKey = None,
    ) -> EventOut:
        """AppendEvent."""
        event = await caller.clients.state.append_event(
            caller.ref(user_id, session_id),
            body.role,
            body.content,
            body.author,
            body.metadata,
            idempotency_key,
        )
        return EventOut(**vars(event))


async def _watch_stream(first: StateChange, changes: AsyncIterator[StateChange]) -> AsyncIterator[bytes]:
    """The watch's SSE body: one ``change`` event per StateChange. A client that disconnects cancels
    this generator, and closing ``changes`` cancels the WatchState call."""
    try:
        change: StateChange | None = first
        while change is not None:
            yield change_event(change)
            change = await anext(changes, None)
    except Exception as error:  # the stream has started: report in-band, never a traceback
        yield failure_event(error)
    finally:
        await changes.aclose()  # type: ignore[attr-defined]
