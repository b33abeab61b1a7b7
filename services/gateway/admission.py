"""Admission: authentication and rate limiting before anything of the request's body is read.

FastAPI reads and parses a body before it solves a route's dependencies, so with the check in a
dependency an unauthenticated caller could make the gateway parse megabytes of JSON (and got 400 or
413, never 401), and a rate-limited one still cost a parse. This pure ASGI middleware runs outside the
body limit and the routes: it looks only at the headers, answers 401 or 429 itself, and hands the
admitted principal to the routes in the request's state (``deps.caller`` picks it up).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from sessionkit.errors import RateLimited, SessionKitError, Unauthenticated
from sessionkit_server.common.auth import KeyRing, Principal, key_from_headers
from sessionkit_server.gateway.errors import error_response
from sessionkit_server.gateway.limits import RateLimiter

#: Paths answered without a key: probes and load balancers check health without credentials, and the
#: API description is public.
PUBLIC_PATHS = frozenset({"/health", "/agent/health", "/openapi.json"})
#: Where the admitted principal travels to the routes (``request.state.principal``).
STATE_KEY = "principal"


def admit(keys: KeyRing, limiter: RateLimiter, headers: dict[bytes, bytes], client_host: str) -> Principal:
    """The request's principal, if its key is valid (auth on) and its bucket has a token."""
    if keys.enabled:
        try:
            key = key_from_headers(_header(headers, b"authorization"), _header(headers, b"x-api-key"))
            principal = keys.authenticate(key)
        except Unauthenticated:
            # Failed attempts share their client address's bucket, so guessing keys is rate limited too.
            _take(limiter, f"addr:{client_host}")
            raise
        _take(limiter, principal.key_id)
        return principal
    principal = keys.authenticate(None)
    _take(limiter, f"addr:{client_host}")
    return principal


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return value.decode("latin-1") if value is not None else None


def _take(limiter: RateLimiter, bucket: str) -> None:
    wait = limiter.take(bucket)
    if wait is not None:
        raise RateLimited(
            f"rate limit exceeded: {limiter.rate:g} requests/s (bursts of {limiter.burst:g}) "
            "per API key; retry after the Retry-After delay",
            retry_after=wait,
        )


def _has_body(headers: dict[bytes, bytes]) -> bool:
    length = headers.get(b"content-length", b"0").strip()
    return b"transfer-encoding" in headers or length not in (b"", b"0")


class Admission:
    def __init__(self, app: ASGIApp, keys: KeyRing, limiter: RateLimiter) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        client = scope.get("client")
        try:
            principal = admit(self.keys, self.limiter, headers, client[0] if client else "unknown")
        except SessionKitError as error:
            # The body is never read: close the connection rather than leave its bytes on it.
            extra = {"Connection": "close"} if _has_body(headers) else {}
            await error_response(error, headers=extra)(scope, receive, send)
            return
        scope.setdefault("state", {})[STATE_KEY] = principal
        await self.app(scope, receive, send)
