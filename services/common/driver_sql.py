"""Hot statements run straight on SQLite's driver connection, inside the transaction SQLAlchemy opened.

Why: a state write is four or five small statements; through ``Connection.execute`` each cost about
ten times what SQLite itself spends on it (parameter coercion, the compiled cache's key, the result
proxy), which made the write's CPU, not its fsync, the bound of group commit. Each statement here
is a SQLAlchemy Core statement compiled once to SQLite's text (one definition, no hand-written SQL),
executed on the DBAPI connection with positional parameters, with the same checks on the way in
(refuse_unstorable_text's rule) and the same errors on the way out (a DBAPIError, so a full disk is
still STORAGE_FULL and a duplicate key still an IntegrityError).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement

from sessionkit.errors import FieldViolation, InvalidArgument

_DIALECT = sqlite.dialect()  # type: ignore[no-untyped-call]


def text_problem(value: str) -> str | None:
    """What makes ``value`` unstorable on some store (NUL, a lone surrogate), or None."""
    if "\x00" in value:
        return "must not contain NUL (\\u0000)"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            return f"is not valid Unicode: a lone surrogate at character {error.start}"
    return None


class SqliteStatement:
    """A Core statement compiled once for SQLite; ``column_keys`` for an INSERT without values."""

    def __init__(self, statement: ClauseElement, column_keys: Sequence[str] | None = None) -> None:
        compiled = statement.compile(dialect=_DIALECT, column_keys=list(column_keys or []) or None)
        self.sql = str(compiled)
        self.names: list[str] = list(getattr(compiled, "positiontup", None) or [])

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> sqlite3.Cursor:
        args = [params[name] for name in self.names]
        for name, value in zip(self.names, args, strict=True):
            if isinstance(value, str):
                problem = text_problem(value)
                if problem is not None:
                    raise InvalidArgument(
                        f"invalid {name}: {problem}", violations=[FieldViolation(name, problem)]
                    )
        raw = conn.connection.dbapi_connection
        assert raw is not None
        try:
            cursor: sqlite3.Cursor = raw.execute(self.sql, args)
        except sqlite3.Error as error:
            raise DBAPIError.instance(self.sql, args, error, sqlite3.Error) from error
        return cursor

    def first(self, conn: Connection, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The first row as a dict of column names (None when there is none)."""
        cursor = self.execute(conn, params)
        row = cursor.fetchone()
        if row is None:
            return None
        return dict(zip((d[0] for d in cursor.description), row, strict=True))
