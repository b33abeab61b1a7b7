"""tests/pg_server.py: with nothing listening at the configured PostgreSQL, the suite starts a throwaway
server (as a non-root user) and removes it afterwards; with no binaries either, it says what to install."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests import pg_server
from tests.conftest import free_port


async def _ask(dsn: str) -> tuple[str, str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT current_user, current_setting('data_directory'), 1 + 1")
        assert row is not None
        return str(row[0]), str(row[1]), int(row[2])
    finally:
        await conn.close()


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_nothing_listening_starts_a_throwaway_server_and_removes_it() -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    assert not pg_server.listening(dead)
    with pg_server.admin_dsn(dead) as dsn:
        assert dsn != dead
        port = urlsplit(dsn).port
        assert port is not None and _port_open(port)
        user, data_dir, two = asyncio.run(_ask(dsn))
        assert (user, two) == ("postgres", 2)
        root = Path(data_dir).parent
        assert root.name.startswith("sessionkit-pg-") and root.is_dir()
        # Not the configured server's process user: root cannot run PostgreSQL at all.
        assert root.stat().st_uid != 0
    assert not root.exists(), "the throwaway cluster's directory outlived the run"
    assert not _port_open(port), "the throwaway server still listens"


def test_a_listening_server_is_used_as_configured() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        dsn = f"postgresql://postgres@127.0.0.1:{server.getsockname()[1]}/test"
        with pg_server.admin_dsn(dsn) as used:
            assert used == dsn


def test_no_server_and_no_binaries_fails_naming_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(pg_server, "BIN_GLOBS", (str(tmp_path / "no-postgresql" / "*" / "bin"),))
    monkeypatch.setenv("PATH", str(tmp_path))
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    with pytest.raises(pg_server.PostgresUnavailable) as failed, pg_server.admin_dsn(dead):
        pytest.fail("no server could have been started")
    message = str(failed.value)
    assert f"nothing listens at {dead}" in message
    assert "apt-get install postgresql" in message
