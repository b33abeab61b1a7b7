"""State keys: validation, and the user:/app: prefixes that put a key in the user's or the app's scope
instead of the session's own."""

from __future__ import annotations

from sessionkit.errors import FieldViolation, InvalidArgument
from sessionkit.ids import key_violation
from sessionkit_server.state.store import JsonObject

SCOPES = ("user:", "app:")
TEMP = "temp:"


def check_key(key: str, field: str = "key") -> str:
    violation = key_violation(field, key)
    if violation is None and key.startswith(TEMP):
        violation = FieldViolation(field, f"{key!r}: temp: keys are never persisted; keep them in the client")
    if violation:
        raise InvalidArgument(f"invalid state key {key[:64]!r}", violations=[violation])
    return key


def split_key(key: str) -> tuple[str, str]:
    """('user' | 'app' | '', key without prefix)."""
    for prefix in SCOPES:
        if key.startswith(prefix):
            return prefix[:-1], key[len(prefix) :]
    return "", key


def merge(own: JsonObject, user: JsonObject, app: JsonObject) -> JsonObject:
    merged = dict(own)
    merged.update({f"user:{k}": v for k, v in user.items()})
    merged.update({f"app:{k}": v for k, v in app.items()})
    return merged
