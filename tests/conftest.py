"""Shared fixtures: storage backends (SQLite file and a real PostgreSQL: the one on 127.0.0.1:5432, or
a throwaway one when nothing listens there, tests/pg_server.py) and real gRPC servers on ephemeral
ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from sessionkit_server.common.config import ServerSettings
from sessionkit_server.state.cached_store import CachingStateStore
from sessionkit_server.state.sql_store import SqlStateStore
from sessionkit_server.state.store import StateStore
from tests import pg_server
from tests.servers import ServerThread

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BACKENDS = ["sqlite", "postgres"]
#: The StateStore implementations the contract (and the service tests) run over.
STORE_KINDS = ["sqlite", "sqlite-cached", "postgres"]


#: `make test` runs two pytest-xdist workers (`-n 2 --dist loadgroup`): the suite mostly waits on
#: servers, processes and fsync, so one worker left the second core idle. Each test package is one
#: group, run whole on one worker, so its package- and module-scoped servers start once. The packages
#: that start replicas on 127.0.0.2-4 share a group: their ports are probed free on 127.0.0.1 only.
#: Tests marked ``serial`` (and all of tests/cluster: 12 server processes) run afterwards, alone: beside
#: the other worker's load their time bounds (readiness within 90 s, exit within the drain time, the
#: README's examples within their deadlines) were missed.
_GROUP_OF_PACKAGE = {"cluster": "replicas", "scaleout": "replicas"}
#: Groups are handed to the workers in this order, longest first, so the run does not end on one
#: worker alone with a long package (the rest follow in collection order).
_LONGEST_FIRST = ["state", "contract", "replicas", "memory", "sdk", "gateway", "knowledge", "agent"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(__file__).parent
    groups: dict[pytest.Item, str] = {}
    for item in items:
        package = item.path.relative_to(root).parts[0]
        groups[item] = _GROUP_OF_PACKAGE.get(package, package)
        if package == "cluster":
            item.add_marker(pytest.mark.serial)
        item.add_marker(pytest.mark.xdist_group(groups[item]))
    rank = {group: i for i, group in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(groups[item], len(rank)))  # stable: order within a group kept


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _pg_admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _announce(config: pytest.Config, line: str) -> None:
    """A line on the terminal even while output is captured: a run on another server than configured
    is news to whoever reads the results."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"\n{line}")


@pytest.fixture(scope="session")
def pg_admin_dsn(pytestconfig: pytest.Config) -> Iterator[str]:
    """The admin DSN of the PostgreSQL server of this run: SESSIONKIT_TEST_PG (default
    postgresql://postgres@127.0.0.1:5432/test), or a throwaway server started from the installed
    binaries when nothing listens there. Fails, never skips: the PostgreSQL path is part of what the
    suite proves."""
    configured = os.environ.get("SESSIONKIT_TEST_PG") or pg_server.DEFAULT_DSN
    try:
        with pg_server.admin_dsn(configured) as dsn:
            if dsn != configured:
                why = "asked for" if configured == pg_server.THROWAWAY else f"nothing listens at {configured}"
                _announce(pytestconfig, f"PostgreSQL: a throwaway server at {dsn} ({why})")
            yield dsn
    except pg_server.PostgresUnavailable as error:
        pytest.fail(str(error))


@contextlib.contextmanager
def fresh_pg_database(admin_dsn: str, prefix: str, needed_for: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on the run's server (its SQLAlchemy asyncpg URL), dropped on
    exit. Sync on purpose: fixtures of any scope use it, outside the tests' event loop."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        asyncio.run(_pg_admin(admin_dsn, f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as error:
        pytest.fail(f"PostgreSQL at {admin_dsn} is needed for {needed_for}: {error}")
    try:
        yield f"{admin_dsn.rsplit('/', 1)[0]}/{name}".replace("postgresql://", "postgresql+asyncpg://")
    finally:
        asyncio.run(_pg_admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_database(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this test run (dropped at the end)."""
    with fresh_pg_database(pg_admin_dsn, "sk_test", "the postgres backend tests") as url:
        yield url


@pytest.fixture(params=BACKENDS)
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all, for migration tests (the shared test database may hold other
    services' tables)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrate.db'}"
        return
    admin: str = request.getfixturevalue("pg_admin_dsn")
    with fresh_pg_database(admin, "sk_migrate", "the postgres migration tests") as url:
        yield url


async def _truncate(url: str) -> None:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        tables = [
            r["tablename"]
            for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename LIKE 'sk_%' AND tablename NOT LIKE '%alembic%'"
            )
        ]
        if tables:
            await conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """One URL per backend; each test starts with empty tables."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    url: str = request.getfixturevalue("pg_database")
    yield url
    asyncio.run(_truncate(url))


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def store_url(store_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The database of ``state_store`` (a sync fixture: pg_database runs its own event loop)."""
    if store_kind != "postgres":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    url: str = request.getfixturevalue("pg_database")
    yield url
    asyncio.run(_truncate(url))


@pytest.fixture
async def state_store(store_kind: str, store_url: str) -> AsyncIterator[StateStore]:
    """Every StateStore implementation, started on empty tables: SqlStateStore on a SQLite file,
    CachingStateStore over an exclusive SQLite store (as the embedded server runs it), and
    SqlStateStore on PostgreSQL."""
    store: StateStore
    if store_kind == "sqlite-cached":
        store = CachingStateStore(SqlStateStore(store_url, history_limit=20, exclusive=True))
    else:
        store = SqlStateStore(store_url, history_limit=20)
    await store.start()
    yield store
    await store.close()


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[ServerThread]:
    """A real gRPC server (all services registered) on an ephemeral port, on its own thread."""
    settings = ServerSettings(
        port=0, data_dir=tmp_path / "data", database_url=database_url, history_limit=20, log_format="text"
    )
    thread = ServerThread(settings).start()
    yield thread
    thread.stop()


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[ServerThread]:
    """A real gRPC server on SQLite only, for tests whose subject is not the storage backend."""
    settings = ServerSettings(port=0, data_dir=tmp_path / "data", history_limit=20, log_format="text")
    thread = ServerThread(settings).start()
    yield thread
    thread.stop()


@pytest.fixture(autouse=True)
def _close_sdk_channels() -> Iterator[None]:
    """The sync SDK keeps channels on its background loop; close them so no test leaks into the next."""
    yield
    from sessionkit import _loop
    from sessionkit.transport import close_channels

    if _loop._loop is not None and _loop._loop.is_running():
        _loop.run(close_channels())
