"""The agent tests' servers: a real gRPC server with every service (SQLite, or PostgreSQL when a test asks)
answering from a real OpenAI-compatible HTTP server (tests/llm_server.py, the ``llm_server`` fixture)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.support import settings
from tests.conftest import _truncate
from tests.llm_server import LLMServer, llm_server_fixture  # noqa: F401 - fixture
from tests.servers import ServerThread


@pytest.fixture(params=["sqlite"])
def server(request: pytest.FixtureRequest, tmp_path: Path, llm_server: LLMServer) -> Iterator[ServerThread]:
    url = request.getfixturevalue("pg_database") if request.param == "postgres" else ""
    thread = ServerThread(settings(tmp_path, llm_server.base_url, url)).start()
    yield thread
    thread.stop()
    if url:
        asyncio.run(_truncate(url))
