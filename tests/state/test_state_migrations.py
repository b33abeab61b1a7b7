"""The Alembic migrations build exactly the schema services/state/tables.py describes, on SQLite and
PostgreSQL, and starting a store again on a migrated database changes nothing (also when the URL is
written in an older or driver-less form)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from sessionkit_server.common.db import normalize_url
from sessionkit_server.state import tables
from sessionkit_server.state.sql_store import MIGRATIONS, VERSION_TABLE, SqlStateStore
from sessionkit_server.state.store import SessionKey


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={"version_table": VERSION_TABLE, "compare_type": True, "compare_server_default": True},
    )
    return list(compare_metadata(context, tables.metadata))


async def test_migrations_build_exactly_the_tables_metadata(empty_database: str) -> None:
    store = SqlStateStore(empty_database)
    try:
        await store.start()
        assert await store.db.read(_differences) == []
        revision = await store.db.read(
            lambda conn: conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar_one()
        )
        assert revision == ScriptDirectory(str(MIGRATIONS)).get_current_head()
    finally:
        await store.close()


async def test_starting_again_on_a_migrated_database_keeps_the_data(empty_database: str) -> None:
    key = SessionKey("app", "alice", "s1")
    first = SqlStateStore(empty_database)
    try:
        await first.start()
        await first.create_session(key, None, {"a": 1}, False, 1)
    finally:
        await first.close()

    second = SqlStateStore(empty_database)
    try:
        await second.start()
        _, own, _, _ = await second.read_state(key, 2)
        assert own == {"a": 1}
        assert await second.db.read(_differences) == []
    finally:
        await second.close()


def test_urls_are_normalized_to_the_drivers_the_stores_use() -> None:
    assert normalize_url("sqlite+aiosqlite:////data/s.db") == "sqlite:////data/s.db"
    assert normalize_url("sqlite+pysqlite:///rel.db") == "sqlite:///rel.db"
    assert normalize_url("sqlite:////data/s.db") == "sqlite:////data/s.db"
    for scheme in (
        "postgresql",
        "postgres",
        "postgresql+psycopg2",
        "postgresql+psycopg",
        "postgresql+asyncpg",
    ):
        assert normalize_url(f"{scheme}://u:p%40ss@h:5432/db") == "postgresql+asyncpg://u:p%40ss@h:5432/db"


async def test_a_legacy_aiosqlite_url_opens_the_same_database(tmp_path: Path) -> None:
    key = SessionKey("app", "alice", "s1")
    path = tmp_path / "legacy.db"
    first = SqlStateStore(f"sqlite+aiosqlite:///{path}")
    try:
        await first.start()
        assert first.url == f"sqlite:///{path}"
        await first.create_session(key, None, {"a": 1}, False, 1)
    finally:
        await first.close()

    second = SqlStateStore(f"sqlite:///{path}")
    try:
        await second.start()
        assert (await second.read_state(key, 2))[1] == {"a": 1}
        assert await second.db.read(_differences) == []
    finally:
        await second.close()
