"""What every route depends on: the caller (API key -> tenant -> app, rate limit) and its clients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Query, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from sessionkit.state_client import SessionRef
from sessionkit_server.common.auth import KeyRing, Principal, key_from_headers
from sessionkit_server.common.config import ServerSettings
from sessionkit_server.gateway.admission import STATE_KEY
from sessionkit_server.gateway.limits import RateLimiter
from sessionkit_server.gateway.models import ErrorBody
from sessionkit_server.gateway.upstream import Clients, Upstream
from sessionkit_server.gateway.watch_hub import WatchHub

ID_REGEX = r"^[A-Za-z0-9_][A-Za-z0-9._@:-]{0,127}$"
APP_REGEX = r"^[A-Za-z0-9_][A-Za-z0-9._@-]{0,63}$"

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <API key>")


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


#: Documented on every authenticated route.
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("Invalid request (reason INVALID_REQUEST / INVALID_ARGUMENT; violations name each field)"),
    401: _error("Missing or invalid API key"),
    403: _error("The key's tenant may not reach this app"),
    404: _error("No such session, memory, source or route"),
    409: _error("Conflict: stale expected_version, existing session or memory"),
    412: _error("Failed precondition"),
    413: _error("Request body or value too large"),
    429: _error("Rate limited; Retry-After says when to retry"),
    499: _error("The call was cancelled upstream"),
    500: _error("Internal error (logged; no traceback is sent)"),
    501: _error("Service not implemented on this server"),
    503: _error("The services behind the gateway are unavailable"),
    504: _error("Upstream deadline exceeded"),
}


@dataclass
class Caller:
    """One request's principal, clients and app."""

    principal: Principal
    clients: Clients
    app: str | None

    @property
    def app_name(self) -> str:
        return self.principal.app_name(self.app)

    def ref(self, user_id: str, session_id: str) -> SessionRef:
        return SessionRef(self.app_name, user_id, session_id)


async def caller(
    request: Request,
    app: Annotated[
        str | None,
        Query(
            pattern=APP_REGEX,
            description="App within the key's tenant (auth off: the app name itself; default 'default').",
        ),
    ] = None,
    # Declared for the API description only (its security schemes): the key was checked, and the
    # request rate limited, by the Admission middleware before the body was read.
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
    api_key: Annotated[str | None, Depends(_api_key)] = None,
) -> Caller:
    gateway: Gateway = request.app.state.gateway
    principal: Principal = getattr(request.state, STATE_KEY)
    key = None
    if gateway.keys.enabled:
        key = key_from_headers(request.headers.get("authorization"), request.headers.get("x-api-key"))
    return Caller(principal, gateway.upstream.clients(key), app)


CallerDep = Annotated[Caller, Depends(caller)]
SessionIdPath = Annotated[str, Path(pattern=ID_REGEX, description="Session id")]
PageSize = Annotated[int, Query(ge=0, le=1000, description="0: the server's default")]
PageToken = Annotated[str, Query(max_length=4096)]
UserQuery = Annotated[str, Query(pattern=ID_REGEX, description="User id (default 'default')")]
#: Writes: the same key (1-128 printable ASCII characters, e.g. a UUID) repeated applies the write once
#: and answers its first reply; passed through as the gRPC request's idempotency_key. Omitted: a fresh
#: key per request.
IdempotencyKey = Annotated[
    str | None,
    Header(
        pattern=r"^[!-~]{1,128}$",
        description="Repeat a write safely: a request repeated with the same key (1-128 printable ASCII "
        "characters, e.g. a UUID) is applied once and answered with the first answer. Omitted: every "
        "request is a new write.",
    ),
]


@dataclass
class Gateway:
    settings: ServerSettings
    upstream: Upstream
    keys: KeyRing
    limiter: RateLimiter
    watches: WatchHub
