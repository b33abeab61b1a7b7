"""The reusable checks of request fields, one definition for both transports: the business layer of
each service calls them, so a gRPC request and the gateway's REST body are refused by the same rule
with the same INVALID_ARGUMENT naming the field (and quoting at most a short prefix of the input).

Text: valid Unicode (no lone surrogate, which neither UTF-8 nor PostgreSQL can hold) without NUL (which
PostgreSQL's text cannot hold, so one rule on every store), at most a length. Numbers: finite, in a
range. Durations and timestamps: within the range every store and google.protobuf can represent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from google.protobuf import duration_pb2

from sessionkit.errors import FieldViolation, InvalidArgument, shown
from sessionkit.jsonvalues import JsonValue

#: The longest time-to-live or timeout a request may ask for (what the gateway has always capped a
#: session TTL at): far enough for any use, near enough that now + it is a valid timestamp on every
#: store and in google.protobuf.Timestamp (which ends in 9999).
MAX_DURATION_SECONDS = 10 * 365 * 86400
#: google.protobuf.Timestamp's range (0001-01-01 to 9999-12-31), in microseconds since the epoch.
MIN_TIMESTAMP_US = -62_135_596_800 * 1_000_000
MAX_TIMESTAMP_US = 253_402_300_799 * 1_000_000 + 999_999


def invalid(field: str, description: str) -> InvalidArgument:
    """The one refusal shape: INVALID_ARGUMENT with a violation naming ``field``."""
    return InvalidArgument(f"invalid {field}: {description}", violations=[FieldViolation(field, description)])


def text_violation(value: str, field: str, max_chars: int | None = None) -> FieldViolation | None:
    if max_chars is not None and len(value) > max_chars:
        return FieldViolation(field, f"is {len(value)} characters; at most {max_chars}")
    if "\x00" in value:
        return FieldViolation(field, "must not contain NUL (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        return FieldViolation(field, f"is not valid Unicode: a lone surrogate at character {error.start}")
    return None


def text(value: str, field: str, *, max_chars: int | None = None, required: bool = False) -> str:
    """``value`` if it is valid Unicode text without NUL of at most ``max_chars`` characters."""
    if required and not value:
        raise invalid(field, "must not be empty")
    violation = text_violation(value, field, max_chars)
    if violation:
        raise InvalidArgument(f"invalid {field}: {violation.description}", violations=[violation])
    return value


def texts(values: Mapping[str, str]) -> None:
    """Check several text fields at once (field name -> value)."""
    for field, value in values.items():
        text(value, field)


def json_text(value: JsonValue, field: str) -> None:
    """Every string (and object key) inside a JSON value is valid text (stored as JSON text, so the
    same rule as a text column)."""
    if isinstance(value, str):
        text(value, field)
    elif isinstance(value, dict):
        for key, item in value.items():
            text(key, f"{field} key {shown(key, 32)!r}")
            json_text(item, f"{field}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            json_text(item, f"{field}[{i}]")


def number(value: float, field: str, *, low: float | None = None, high: float | None = None) -> float:
    """``value`` if it is finite and within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(field, f"must be a number, not {type(value).__name__}")
    if not math.isfinite(value):
        raise invalid(field, f"must be a finite number, not {value}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise invalid(field, f"{value} is outside [{_num(low)}, {_num(high)}]")
    return value


def count(value: int, field: str, *, low: int = 0, high: int | None = None) -> int:
    """``value`` if it is an integer within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(field, f"must be an integer, not {type(value).__name__}")
    if value < low or (high is not None and value > high):
        raise invalid(field, f"{value} is outside [{low}, {_num(high)}]")
    return value


def duration(seconds: float, field: str, *, low: float = 0, high: float = MAX_DURATION_SECONDS) -> float:
    """A duration in seconds within [low, high] (at most MAX_DURATION_SECONDS by default)."""
    return number(seconds, field, low=low, high=high)


def duration_proto(message: duration_pb2.Duration, field: str) -> float:
    """A google.protobuf.Duration as seconds, refusing one the spec calls invalid (nanos outside
    +/-999,999,999 or of the other sign than seconds) or longer than MAX_DURATION_SECONDS."""
    seconds, nanos = message.seconds, message.nanos
    if abs(nanos) > 999_999_999 or (seconds > 0 and nanos < 0) or (seconds < 0 and nanos > 0):
        raise invalid(field, f"is not a valid Duration (seconds={seconds}, nanos={nanos})")
    return duration(seconds + nanos / 1e9, field, low=-MAX_DURATION_SECONDS)


def timestamp_us(micros: int, field: str) -> int:
    """Microseconds since the epoch within google.protobuf.Timestamp's range (years 1 to 9999)."""
    if not MIN_TIMESTAMP_US <= micros <= MAX_TIMESTAMP_US:
        raise invalid(field, "must be a time between the years 1 and 9999")
    return micros


def _num(value: float | None) -> str:
    return "unbounded" if value is None else f"{value:g}"
