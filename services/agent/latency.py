"""Durations as a turn's metadata reports them (timestamps are sessionkit_server.common.timestamps)."""

from __future__ import annotations


def ms(seconds: float) -> float:
    """A duration as TurnLatency reports it: milliseconds, to the microsecond."""
    return round(seconds * 1000, 3)
