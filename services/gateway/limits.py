"""Request limits of the gateway: the body size (413, checked on Content-Length and on the bytes as they
arrive, so a chunked upload cannot get round it) and a token bucket per API key (429 + Retry-After)."""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sessionkit_server.gateway.errors import TooLarge, error_body

#: Paths whose bodies may be as large as an uploaded knowledge file.
UPLOAD_SUFFIX = "/knowledge/files"


class BodyLimit:
    """Pure ASGI middleware (it must see the raw receive channel). Raising HTTPException(413) from
    ``receive`` makes FastAPI's body reading re-raise it, and the error handler answers the one shape."""

    def __init__(self, app: ASGIApp, max_bytes: int, upload_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_bytes = upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload_bytes if scope["path"].endswith(UPLOAD_SUFFIX) else self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_413(send, limit)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise TooLarge(limit)
            return message

        await self.app(scope, limited, send)


async def _send_413(send: Send, limit: int) -> None:
    body = json.dumps(error_body(TooLarge(limit).error)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RateLimiter:
    """Token buckets: ``rate`` requests per second, bursts of ``burst``, one bucket per caller. In process
    memory, so the limit is per gateway replica (documented); the least recently seen buckets beyond
    ``max_buckets`` are dropped (a dropped bucket starts full again)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = 100_000,
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.max_buckets = max_buckets
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, caller: str) -> float | None:
        """Take one token: None if allowed, else the seconds until a token is available."""
        if not self.enabled:
            return None
        now = self.clock()
        tokens, last = self._buckets.pop(caller, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[caller] = (tokens, now)
        if len(self._buckets) > self.max_buckets:
            self._buckets.popitem(last=False)
        return None if allowed else (1.0 - tokens) / self.rate
