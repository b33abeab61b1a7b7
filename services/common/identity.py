"""Who a request is for: the (app, user, session) key every service scopes its data by.

One validation for every service (the state service used to own it, and memory, knowledge and agent
imported it from there): empty app and user ids mean "default", each id follows sessionkit.ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sessionkit.errors import InvalidArgument
from sessionkit.ids import DEFAULT, id_violation, new_session_id


@dataclass(frozen=True, order=True)
class SessionKey:
    """A session of a user of an app. As an owner it sees its session's data and its user's."""

    app_name: str
    user_id: str
    session_id: str


#: The caller of a memory or knowledge call: the session asking (same fields, named for the role).
Owner = SessionKey


class SessionRefLike(Protocol):
    """What every request's ``session`` (sessionkit.v1.SessionRef) carries."""

    app_name: str
    user_id: str
    session_id: str


def session_key(app_name: str, user_id: str, session_id: str, *, generate: bool = False) -> SessionKey:
    """The validated key; ``generate``: a new session id when none is given (CreateSession)."""
    app_name, user_id = app_name or DEFAULT, user_id or DEFAULT
    if not session_id and generate:
        session_id = new_session_id()
    violations = [
        v
        for v in (
            id_violation("session.app_name", app_name),
            id_violation("session.user_id", user_id),
            id_violation("session.session_id", session_id),
        )
        if v
    ]
    if violations:
        raise InvalidArgument("invalid session reference", violations=violations)
    return SessionKey(app_name, user_id, session_id)


def owner_of(ref: SessionRefLike) -> Owner:
    """The validated owner of a request's session reference."""
    return session_key(ref.app_name, ref.user_id, ref.session_id)
