"""The gateway tests' servers: a state server on each backend or on SQLite, a gateway in front of it, and an
HTTP client of that gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway.support import gateway_for, state_server
from tests.gateway.test_gateway_support import GatewayThread
from tests.servers import ServerThread


@pytest.fixture
def backend(database_url: str, tmp_path: Path) -> Iterator[ServerThread]:
    """A state server on each backend (SQLite file, PostgreSQL)."""
    thread = state_server(tmp_path, database_url)
    yield thread
    thread.stop()


@pytest.fixture
def grpc_server(tmp_path: Path) -> Iterator[ServerThread]:
    thread = state_server(tmp_path)
    yield thread
    thread.stop()


@pytest.fixture
def gateway(grpc_server: ServerThread) -> Iterator[GatewayThread]:
    thread = gateway_for(grpc_server)
    yield thread
    thread.stop()


@pytest.fixture
def http(gateway: GatewayThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        yield client
