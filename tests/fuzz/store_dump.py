"""A dump of everything a server stored in its SQLite database, to compare before and after a request
that was refused: a refused request writes nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

#: Tables a server writes on its own schedule, whatever the requests (the memory and knowledge vector
#: outboxes drain in the background after an accepted write).
BACKGROUND_TABLES = frozenset({"alembic_version"})

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
        if old != new:
            added = [row[:300] for row in sorted(new - old)[:limit]]
            removed = [row[:300] for row in sorted(old - new)[:limit]]
            lines.append(f"{table}: +{len(new - old)} {added} -{len(old - new)} {removed}")
    return "\n".join(lines)
