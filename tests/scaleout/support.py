"""What the scale-out tests share: a server interceptor that counts the calls a server answers."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import grpc


class CallCounter(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts the calls of each sessionkit method this server receives (health and reflection aside)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        method = handler_call_details.method
        if method.startswith("/sessionkit."):
            with self._lock:
                self.calls[method] += 1
        return await continuation(handler_call_details)

    def total(self, service: str = "") -> int:
        with self._lock:
            return sum(n for method, n in self.calls.items() if service in method)
