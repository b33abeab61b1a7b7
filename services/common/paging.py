"""Page tokens and page sizes, the same for every List method of every service."""

from __future__ import annotations

import base64
import binascii

from sessionkit.errors import FieldViolation, InvalidArgument


def page_token(value: str) -> str:
    """An opaque token for the position ``value`` (the last item's sort key)."""
    return base64.urlsafe_b64encode(value.encode()).decode()


def read_token(token: str) -> str | None:
    """The position a token stands for, None for the first page; InvalidArgument for a foreign token."""
    if not token:
        return None
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidArgument(
            "invalid page_token", violations=[FieldViolation("page_token", "not a token this service issued")]
        ) from None


def read_int_token(token: str, what: str) -> int:
    """A token for an integer position (0 for the first page)."""
    value = read_token(token)
    if value is None:
        return 0
    if not value.isdigit():
        raise InvalidArgument("invalid page_token", violations=[FieldViolation("page_token", f"not {what}")])
    return int(value)


def page_size(value: int, default: int, maximum: int) -> int:
    if value < 0 or value > maximum:
        raise InvalidArgument(
            "invalid page_size", violations=[FieldViolation("page_size", f"must be between 0 and {maximum}")]
        )
    return value or default
