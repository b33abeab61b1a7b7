"""Time as the agent service stores it (integer microseconds since the epoch) and reports it."""

from __future__ import annotations

import time


def now_us() -> int:
    return time.time_ns() // 1000


def ms(seconds: float) -> float:
    """A duration as TurnLatency reports it: milliseconds, to the microsecond."""
    return round(seconds * 1000, 3)
