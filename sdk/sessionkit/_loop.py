"""One background event loop per process, on which the synchronous Session runs AsyncSession's
coroutines (so the sync API works the same inside scripts, threads and notebooks)."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="sessionkit-sdk", daemon=True).start()
            _loop = loop
            atexit.register(_shutdown, loop)
        return _loop


def _shutdown(loop: asyncio.AbstractEventLoop) -> None:
    from sessionkit.transport import close_channels

    if loop.is_running():
        with contextlib.suppress(Exception):  # best effort at interpreter exit
            asyncio.run_coroutine_threadsafe(close_channels(), loop).result(timeout=2)
        loop.call_soon_threadsafe(loop.stop)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the background loop and wait for its result (exceptions propagate)."""
    return asyncio.run_coroutine_threadsafe(coro, _background_loop()).result()


def iterate(agen: AsyncIterator[T]) -> Iterator[T]:
    """A blocking iterator over an async iterator running on the background loop."""
    try:
        while True:
            try:
                yield run(agen.__anext__())  # type: ignore[arg-type]
            except StopAsyncIteration:
                return
    finally:
        aclose = getattr(agen, "aclose", None)
        if aclose is not None:
            run(aclose())
