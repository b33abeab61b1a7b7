"""``sessionkit migrate``: the services' schemas upgraded once and exited, with no model loaded, even
when several migrate commands and servers start at once on an empty PostgreSQL database."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import free_port, fresh_pg_database
from tests.servers import ChildProcess, child_env, wait_serving

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SERVICES = ("state", "memory", "knowledge", "agent")


@pytest.fixture
def empty_pg(pg_admin_dsn: str) -> Iterator[str]:
    with fresh_pg_database(pg_admin_dsn, "sk_migrate_cmd", "the migrate command tests") as url:
        yield url


async def _version_rows(url: str) -> dict[str, list[str]]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return {
            name: [r[0] for r in await conn.fetch(f"SELECT version_num FROM sk_{name}_alembic_version")]
            for name in SERVICES
        }
    finally:
        await conn.close()


def test_migrate_upgrades_every_service_and_loads_no_model(empty_pg: str, tmp_path: Path) -> None:
    # The command in-process (as the CLI runs it), then a look at what it imported: no model stack.
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from sessionkit.cli import app, _register_plugins\n"
        "_register_plugins()\n"
        "result = CliRunner().invoke(app, ['migrate'])\n"
        "print(result.output)\n"
        "heavy = sorted({'torch', 'sentence_transformers', 'transformers'} & set(sys.modules))\n"
        "print('heavy:', heavy)\n"
        "sys.exit(result.exit_code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=child_env(SESSIONKIT_DATABASE_URL=empty_pg),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name in SERVICES:
        assert f"{name}: upgraded empty -> " in result.stdout
    assert "heavy: []" in result.stdout
    assert not (tmp_path / ".sessionkit").exists()  # PostgreSQL only: no data directory made
    again = subprocess.run(
        [sys.executable, "-m", "sessionkit.cli", "migrate", "--service", "state"],
        env=child_env(SESSIONKIT_DATABASE_URL=empty_pg),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("state: up to date at ")


def test_migrate_commands_and_servers_at_once_migrate_once(empty_pg: str, tmp_path: Path) -> None:
    env = child_env(SESSIONKIT_DATABASE_URL=empty_pg, SESSIONKIT_HTTP_PORT="0")
    migrations = [
        ChildProcess(
            [sys.executable, "-m", "sessionkit.cli", "migrate"], tmp_path / f"migrate-{i}.log", env=env
        )
        for i in range(3)
    ]
    ports = [free_port(), free_port()]
    serve = [sys.executable, "-m", "sessionkit.cli", "serve", "--service", "state", "--service", "agent"]
    servers = [
        ChildProcess([*serve, f"--port={port}"], tmp_path / f"serve-{port}.log", env=env, cwd=tmp_path)
        for port in ports
    ]
    try:
        for proc in migrations:
            assert proc.wait(timeout=180) == 0, proc.log()
        for port, server in zip(ports, servers, strict=True):
            wait_serving(f"127.0.0.1:{port}", timeout=120, child=server)
    finally:
        for server in servers:
            server.stop()
    rows = asyncio.run(_version_rows(empty_pg))
    assert all(len(versions) == 1 for versions in rows.values()), rows
    logs = "".join(p.log() for p in [*migrations, *servers])
    assert "Traceback" not in logs and "error" not in logs.lower(), logs[-3000:]
