"""Session events (the conversation log): validated appends, with an idempotency key kept apart from
state writes' keys, and pages or a tail of the log."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sessionkit import reasons
from sessionkit.errors import FieldViolation, InvalidArgument
from sessionkit.jsonvalues import check_json, dumps
from sessionkit_server.common import checks, paging
from sessionkit_server.common.idempotency import MAX_KEY_LENGTH
from sessionkit_server.common.timestamps import now_us
from sessionkit_server.state.store import EventRecord, JsonObject, SessionKey

if TYPE_CHECKING:
    from sessionkit_server.state.service import StateService


async def append_event(
    service: StateService,
    key: SessionKey,
    role: str,
    content: str,
    author: str = "",
    metadata: JsonObject | None = None,
    idempotency_key: str = "",
) -> EventRecord:
    violations = []
    if not role or len(role) > 64:
        violations.append(FieldViolation("event.role", "role must be 1-64 characters (e.g. 'user')"))
    if len(author) > 128:
        violations.append(FieldViolation("event.author", "author must be at most 128 characters"))
    if len(idempotency_key) > MAX_KEY_LENGTH:
        violations.append(FieldViolation("idempotency_key", f"1 to {MAX_KEY_LENGTH} characters"))
    elif idempotency_key and (bad_key := checks.text_violation(idempotency_key, "idempotency_key")):
        violations.append(bad_key)
    for field, value in (("event.role", role), ("event.content", content), ("event.author", author)):
        violation = checks.text_violation(value, field)
        if violation:
            violations.append(violation)
    if violations:
        raise InvalidArgument("invalid event", violations=violations)
    meta = check_json(metadata or {}, "event.metadata")
    assert isinstance(meta, dict)
    size = len(content.encode()) + len(dumps(meta).encode())
    if size > service.limits.max_event_bytes:
        raise reasons.EVENT_TOO_LARGE.error(
            size=size,
            limit=service.limits.max_event_bytes,
            metadata={"limit_bytes": str(service.limits.max_event_bytes), "size_bytes": str(size)},
        )
    event = EventRecord(0, role, content, author, meta, 0)
    return await service.store.append_event(key, event, idempotency_key, now_us())


async def list_events(
    service: StateService,
    key: SessionKey,
    page_size: int = 0,
    page_token: str = "",
    tail: int = 0,
    author: str = "",
) -> tuple[list[EventRecord], str]:
    if tail < 0 or tail > service.limits.max_page_size:
        raise InvalidArgument(
            "invalid tail",
            violations=[FieldViolation("tail", f"must be between 0 and {service.limits.max_page_size}")],
        )
    size = service._page_size(page_size, 100)
    token = paging.read_token(page_token)
    if token is not None and not token.isdigit():
        raise InvalidArgument(
            "invalid page_token", violations=[FieldViolation("page_token", "not an event id")]
        )
    await service.get_session(key)
    events = await service.store.list_events(key, size + 1, int(token or 0), tail, author)
    if tail:
        return events, ""
    more = len(events) > size
    events = events[:size]
    return events, paging.page_token(str(events[-1].id)) if more else ""
