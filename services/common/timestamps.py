"""Time as the services store it (integer microseconds since the epoch) and as the protos carry it."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2


def now_us() -> int:
    """Now, in microseconds since the epoch (the unit of every *_us column)."""
    return time.time_ns() // 1000


def to_proto(micros: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(micros)
    return ts


def from_proto(ts: timestamp_pb2.Timestamp) -> int:
    return int(ts.ToMicroseconds())


def to_datetime(micros: int) -> datetime:
    return datetime.fromtimestamp(micros / 1_000_000, tz=UTC)


def from_datetime(when: datetime) -> int:
    """Microseconds of an aware datetime (a naive one is taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
