"""Identifier rules, shared by the SDK (fail fast, before a call) and the services (the authority).

app_name, user_id and session_id: 1 to 128 characters from ``[A-Za-z0-9._@:-]``, the first a letter,
a digit or ``_``. So no id is ``.``, ``..``, contains ``/``, ``\\`` or NUL, or can name a path outside
a data directory; ids are still never used raw as file names (see :func:`path_component`).
"""

from __future__ import annotations

import hashlib
import re
import uuid

from sessionkit.errors import FieldViolation, InvalidArgument

ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@:-]{0,127}")
ID_RULE = "1-128 characters from [A-Za-z0-9._@:-], starting with a letter, digit or '_'"
DEFAULT = "default"
MAX_KEY_LENGTH = 256


def id_violation(field: str, value: str) -> FieldViolation | None:
    if ID_PATTERN.fullmatch(value):
        return None
    shown = value if len(value) <= 40 else value[:40] + f"... ({len(value)} characters)"
    return FieldViolation(field, f"{shown!r} is not a valid id: {ID_RULE}")


def check_id(field: str, value: str) -> str:
    violation = id_violation(field, value)
    if violation:
        raise InvalidArgument(f"invalid {field}", violations=[violation])
    return value


def new_session_id() -> str:
    return "s-" + uuid.uuid4().hex


def path_component(value: str) -> str:
    """A file-name-safe, collision-free rendering of a valid id (ids may contain ':' and '@')."""
    check_id("id", value)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", value)
    if safe == value:
        return value
    return f"{safe}-{hashlib.sha256(value.encode()).hexdigest()[:8]}"


def key_violation(field: str, key: str) -> FieldViolation | None:
    if not key:
        return FieldViolation(field, "state key must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        return FieldViolation(field, f"state key is {len(key)} characters; at most {MAX_KEY_LENGTH}")
    if "\x00" in key:
        return FieldViolation(field, "state key must not contain NUL")
    for prefix in ("user:", "app:", "temp:"):
        if key.startswith(prefix) and len(key) == len(prefix):
            return FieldViolation(field, f"state key {key!r} has a scope prefix but no name")
    return None
