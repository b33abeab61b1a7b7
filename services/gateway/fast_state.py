"""GET /v1/sessions/{id}/state without FastAPI's request machinery: the most frequent REST read.

Why: through FastAPI a state read spent more time in routing, dependency solving (the caller, its
query and security parameters) and response-model validation than in the gRPC call it makes, which
made it ~3x the same call made directly over gRPC. This pure ASGI middleware sits inside Admission
(the key is checked and the request rate limited already) and answers the plain form of that route
itself: path ``/v1/sessions/<session id>/state``, with only ``user_id``, ``app`` (each at most once)
and ``keys`` (repeatable) in the query, each matching the route's own patterns. Anything else (another
method, an odd query, an invalid id) goes on to the FastAPI route unchanged, which answers it, errors
included, as it always has. The answer is the route's: the same JSON body, the same error bodies.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import parse_qsl

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from sessionkit import reasons
from sessionkit.errors import SessionKitError
from sessionkit_server.common.auth import Principal, key_from_headers
from sessionkit_server.gateway.admission import STATE_KEY
from sessionkit_server.gateway.deps import APP_REGEX, ID_REGEX, Caller, Gateway
from sessionkit_server.gateway.errors import error_response, sessionkit_error_response

log = logging.getLogger("sessionkit.gateway")

_ID = re.compile(ID_REGEX)
_APP = re.compile(APP_REGEX)
_PREFIX, _SUFFIX = "/v1/sessions/", "/state"


def plain_state_read(scope: Scope) -> tuple[str, str, str | None, list[str] | None] | None:
    """(session id, user id, app, keys) of a GET state request in its plain form, else None."""
    path: str = scope["path"]
    if scope["method"] != "GET" or scope.get("root_path") or not path.startswith(_PREFIX):
        return None
    if not path.endswith(_SUFFIX):
        return None
    session_id = path[len(_PREFIX) : -len(_SUFFIX)]
    if "/" in session_id or not _ID.fullmatch(session_id):
        return None
    user_id, app, keys = "default", None, []
    seen: set[str] = set()
    for name, value in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
        if name == "keys":
            keys.append(value)
            continue
        if name in seen:
            return None
        seen.add(name)
        if name == "user_id" and _ID.fullmatch(value):
            user_id = value
        elif name == "app" and _APP.fullmatch(value):
            app = value
        else:
            return None
    return session_id, user_id, app, keys or None


class FastStateRead:
    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        plain = plain_state_read(scope) if scope["type"] == "http" else None
        principal: Principal | None = scope.get("state", {}).get(STATE_KEY)
        if plain is None or principal is None:
            await self.app(scope, receive, send)
            return
        session_id, user_id, app, keys = plain
        key = None
        if self.gateway.keys.enabled:
            headers = dict(scope["headers"])
            key = key_from_headers(_header(headers, b"authorization"), _header(headers, b"x-api-key"))
        caller = Caller(principal, self.gateway.upstream.clients(key), app)
        response: JSONResponse
        try:
            state, version = await caller.clients.state.get_state(caller.ref(user_id, session_id), keys)
            response = JSONResponse({"state": state, "version": version})
        except SessionKitError as error:
            response = sessionkit_error_response(error)
        except Exception as error:  # the FastAPI app's last-resort handler, as the route would get
            log.error("unhandled error in GET %s", scope["path"], exc_info=error)
            response = error_response(
                reasons.INTERNAL.error(detail="internal error in the gateway; its log has the details"),
                headers={"Connection": "close"},
            )
        await response(scope, receive, send)


def _header(headers: dict[bytes, bytes], name: bytes) -> Any:
    value = headers.get(name)
    return value.decode("latin-1") if value is not None else None
