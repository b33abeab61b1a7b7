"""The storage contract's fixtures: one ``database`` per backend (a SQLite file, a PostgreSQL database),
migrated as the server migrates it at start-up (one Database shared by every service's store, each
store's ``start()`` running its service's Alembic migrations: sessionkit_server.server.Host.start).

SQLite: a fresh file per test. PostgreSQL: a fresh database per test module (created on the run's
server, tests/conftest.py ``pg_admin_dsn``, dropped after the module), every table emptied before each
test, so each test starts on empty, fully migrated tables on both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from sessionkit_server.agent.store import AgentStore
from sessionkit_server.common.db import Database
from sessionkit_server.knowledge.store import KnowledgeStore
from sessionkit_server.memory.store import MemoryStore
from sessionkit_server.state.sql_store import SqlStateStore
from tests.conftest import fresh_pg_database

CONTRACT_BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="module")
def contract_pg_url(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this module (dropped after it)."""
    with fresh_pg_database(pg_admin_dsn, "sk_contract", "the postgres contract") as url:
        yield url


async def migrate_all(db: Database) -> None:
    """Every service's migrations on ``db``, in the order the server runs them."""
    await SqlStateStore(db).start()
    await MemoryStore(db).start()
    await KnowledgeStore(db).start()
    await AgentStore(db).start()


def _empty_tables(conn: Connection) -> None:
    tables = conn.execute(
        text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename LIKE 'sk\\_%' AND tablename NOT LIKE '%alembic%'"
        )
    ).scalars()
    names = ", ".join(f'"{name}"' for name in tables)
    if names:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=CONTRACT_BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of each backend (a sync fixture: creating the PostgreSQL database runs its own loop)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'contract.db'}"
    url: str = request.getfixturevalue("contract_pg_url")
    return url


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """A migrated, empty database on each backend, shared by the stores of a test as the server
    shares its one Database."""
    db = Database(database_url)
    try:
        await migrate_all(db)
        if db.is_postgres:
            await db.write(_empty_tables)
        yield db
    finally:
        await db.close()
