"""The knowledge service's server on each backend: SQLite and PostgreSQL with embedded Chroma, and SQLite
with a real Chroma server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.chroma_server import chroma_server  # noqa: F401 - fixture
from tests.conftest import _truncate
from tests.knowledge.support import _settings
from tests.servers import ServerThread


@pytest.fixture(scope="package", params=["sqlite", "postgres", "chroma-server"])
def knowledge_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    """One server per backend for the package (tests use fresh session ids); loopback URLs allowed so
    pages can come from the local HTTP server."""
    kind = request.param
    url = request.getfixturevalue("pg_database") if kind == "postgres" else ""
    vector_url = request.getfixturevalue("chroma_server") if kind == "chroma-server" else ""
    thread = ServerThread(
        _settings(
            tmp_path_factory.mktemp(f"knowledge-{kind}"), url, vector_url, knowledge_max_upload_bytes=2 << 20
        )
    ).start()
    yield thread
    thread.stop()
    if url:
        asyncio.run(_truncate(url))
