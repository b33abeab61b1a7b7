"""Run a service's Alembic migrations at start-up, once even when several replicas start together."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import is_postgres


def alembic_config(script_location: Path, version_table: str, connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["version_table"] = version_table
    if connection is not None:
        config.attributes["connection"] = connection
    return config


async def upgrade(engine: AsyncEngine, script_location: Path, version_table: str) -> None:
    def run(connection: Connection) -> None:
        command.upgrade(alembic_config(script_location, version_table, connection), "head")

    async with engine.begin() as conn:
        if is_postgres(engine):
            # Replicas starting at once: one migrates, the others wait and then find nothing to do.
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": version_table})
        await conn.run_sync(run)
