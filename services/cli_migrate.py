"""``sessionkit migrate``: the configured services' database migrations, run once and exited (a
Kubernetes Job before a rollout). Loads no model and starts no server; safe to run while replicas start,
since Database.migrate holds a PostgreSQL advisory lock per service around each upgrade."""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from typing import Annotated, Any

import typer
from alembic.runtime.migration import MigrationContext
from rich.console import Console
from sqlalchemy import Connection

from sessionkit_server.common.db import Database
from sessionkit_server.common.migrate import upgrader

#: Each service's store module, which names its Alembic scripts (MIGRATIONS) and VERSION_TABLE.
STORE_MODULES = {
    "state": "sessionkit_server.state.sql_store",
    "memory": "sessionkit_server.memory.store",
    "knowledge": "sessionkit_server.knowledge.store",
    "agent": "sessionkit_server.agent.store",
}
err = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command()(migrate)


def migrate(
    service: Annotated[
        list[str] | None,
        typer.Option("--service", help="Migrate only this service (repeatable; default SESSIONKIT_SERVICES)"),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL (default SESSIONKIT_DATABASE_URL; else SQLite in data dir)"),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory of the SQLite default")] = None,
) -> None:
    """Upgrade the services' database schemas to this version's and exit (0: up to date)."""
    from pydantic import ValidationError

    from sessionkit_server.common.config import ServerSettings

    overrides: dict[str, Any] = {"database_url": database_url, "data_dir": data_dir, "services": service}
    try:
        settings = ServerSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        err.print(f"[red]error:[/red] invalid settings: {problems}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    try:
        results = asyncio.run(migrate_services(settings.resolved_database_url(), list(settings.services)))
    except Exception as error:  # a database that cannot be reached, a failed revision: one clear line
        err.print(f"[red]error:[/red] migration failed: {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    for name, (before, after) in results.items():
        change = f"upgraded {before or 'empty'} -> {after}" if before != after else f"up to date at {after}"
        print(f"{name}: {change}")


async def migrate_services(url: str, services: list[str]) -> dict[str, tuple[str | None, str | None]]:
    """Each service's Alembic revision before and after its upgrade to head."""
    db = Database(url, pool_size=1)
    try:
        return {name: await _migrate_one(db, name) for name in services}
    finally:
        await db.close()


async def _migrate_one(db: Database, name: str) -> tuple[str | None, str | None]:
    store = importlib.import_module(STORE_MODULES[name])
    version_table: str = store.VERSION_TABLE
    upgrade = upgrader(store.MIGRATIONS, version_table)
    revisions: list[str | None] = []

    def observed(conn: Connection) -> None:
        revisions.append(_revision(conn, version_table))
        upgrade(conn)
        revisions.append(_revision(conn, version_table))

    await db.migrate(observed, version_table)
    return revisions[0], revisions[1]


def _revision(conn: Connection, version_table: str) -> str | None:
    return MigrationContext.configure(conn, opts={"version_table": version_table}).get_current_revision()
