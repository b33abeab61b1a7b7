"""A dump of everything a server stored in its database (SQLite or PostgreSQL), to compare before and
after a request that was refused: a refused request writes nothing."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

T = TypeVar("T")

#: Tables a server writes on its own schedule, whatever the requests.
BACKGROUND_TABLES = frozenset({"alembic_version"})


def _drained(table: str) -> bool:
    """The memory and knowledge vector outboxes: an accepted add's entries are removed in the
    background once its vectors are written (behind the reply), possibly while a later, refused request
    runs. A refused request must not add an entry; an entry's removal is not its doing."""
    return table.endswith("_outbox")


Dump = dict[str, list[tuple[object, ...]]]


def dump(db_file: Path) -> Dump:
    """Every row of every table, sorted, read through a read-only connection of its own."""
    conn = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, timeout=30)
    try:
        tables = [
            name
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            if name not in BACKGROUND_TABLES and not name.startswith("sqlite_")
        ]
        return {table: sorted(conn.execute(f'SELECT * FROM "{table}"'), key=repr) for table in tables}
    finally:
        conn.close()


def difference(before: Dump, after: Dump, limit: int = 5) -> str:
    """What changed, table by table (a few rows each), or "" when nothing did."""
    lines = []
    for table in sorted(set(before) | set(after)):
        old, new = set(map(repr, before.get(table, []))), set(map(repr, after.get(table, [])))
        if _drained(table):
            old &= new  # only additions count
        if old != new:
            added = [row[:300] for row in sorted(new - old)[:limit]]
            removed = [row[:300] for row in sorted(old - new)[:limit]]
            lines.append(f"{table}: +{len(new - old)} {added} -{len(old - new)} {removed}")
    return "\n".join(lines)


class PgDump:
    """The same dump of a PostgreSQL database (every table of its public schema, each row as JSON), in
    one query on one connection kept open: a dump runs twice per fuzzed request."""

    def __init__(self, url: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="pg-dump")
        self._thread.start()
        self._conn = self._run(asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://")))
        names = [
            r["tablename"]
            for r in self._run(
                self._conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
            )
            if r["tablename"] not in BACKGROUND_TABLES
        ]
        self._names = names
        self._sql = " UNION ALL ".join(
            f"SELECT '{n}' AS t, to_jsonb(x)::text AS r FROM \"{n}\" x" for n in names
        )

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

    def __call__(self) -> Dump:
        out: Dump = {name: [] for name in self._names}
        for row in self._run(self._conn.fetch(self._sql)):
            out[row["t"]].append((row["r"],))
        return {name: sorted(rows, key=repr) for name, rows in out.items()}

    def close(self) -> None:
        self._run(self._conn.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
