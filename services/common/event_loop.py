"""The servers' event loop: uvloop where it is installed (Linux, macOS), asyncio's own elsewhere.

grpc.aio runs on any asyncio loop (its completion queue is polled from a thread of its own that wakes
the loop), and so do asyncpg and uvicorn; uvloop's loop, socket transports and callbacks cost less per
call, and a unary call here is mostly that machinery (docs/BENCHMARKS.md, "Issue 15: the per-call
cost"). SESSIONKIT_EVENT_LOOP=asyncio runs on asyncio's loop (to compare, or to rule uvloop out).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory(kind: str = "uvloop") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory for ``kind`` "uvloop" when uvloop is installed; None (asyncio's default)
    otherwise."""
    if kind != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:  # Windows, or an install without it: asyncio's loop works the same, slower
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], kind: str = "uvloop") -> T:
    """``asyncio.run(main)`` on the loop ``kind`` names (ServerSettings.event_loop)."""
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(main)
