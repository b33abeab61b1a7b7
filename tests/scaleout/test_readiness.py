"""Readiness follows dependencies: a service whose database or Chroma server is down reports
NOT_SERVING on the health service (so load balancers and Kubernetes stop sending it calls) and SERVING
once it is back; liveness (the service name "") stays SERVING throughout, so no pod is restarted for an
outage elsewhere."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sessionkit import Session
from sessionkit_server.common.config import ServerSettings
from tests import pg_server
from tests.chroma_server import ChromaServer
from tests.servers import ServerThread

pytestmark = pytest.mark.slow

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _status(address: str, name: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=name), timeout=5
        )
        return int(reply.status)


def _becomes(address: str, name: str, status: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _status(address, name) != status:
        assert time.monotonic() < deadline, f"{name or 'liveness'} not {status} within {timeout} s"
        time.sleep(0.1)


@pytest.fixture
def own_postgres() -> Iterator[pg_server.ThrowawayServer]:
    """A PostgreSQL server of this test's own, to stop and start (never the run's shared one)."""
    try:
        server = pg_server.ThrowawayServer().start()
    except pg_server.PostgresUnavailable as error:
        pytest.fail(str(error))
    yield server
    server.close()


@pytest.mark.postgres
def test_a_database_outage_turns_readiness_not_liveness(
    own_postgres: pg_server.ThrowawayServer, tmp_path: Path
) -> None:
    settings = ServerSettings(
        port=0, services=["state"], database_url=own_postgres.dsn, data_dir=tmp_path, http_port=0,
        log_format="text", health_check_interval_seconds=0.2,
    )  # fmt: skip
    server = ServerThread(settings).start()
    state = "sessionkit.v1.StateService"
    try:
        assert _status(server.address, state) == SERVING
        own_postgres.stop()
        _becomes(server.address, state, NOT_SERVING)
        assert _status(server.address, "") == SERVING
        own_postgres.start()
        _becomes(server.address, state, SERVING)
        with Session("after-outage", "u", address=server.address) as session:
            session.set_state("back", True)
            assert session.get_state("back") is True
    finally:
        server.stop()


def test_a_chroma_outage_turns_memory_and_knowledge_not_ready(tmp_path: Path) -> None:
    chroma = ChromaServer(tmp_path / "chroma").start()
    settings = ServerSettings(
        port=0, services=["state", "memory", "knowledge"], vector_url=chroma.url, data_dir=tmp_path / "data",
        http_port=0, log_format="text", health_check_interval_seconds=0.2,
    )  # fmt: skip
    server = ServerThread(settings).start()
    retrieval = ("sessionkit.v1.MemoryService", "sessionkit.v1.KnowledgeService")
    try:
        chroma.stop()
        for name in retrieval:
            _becomes(server.address, name, NOT_SERVING)
        assert _status(server.address, "sessionkit.v1.StateService") == SERVING  # needs no Chroma
        assert _status(server.address, "") == SERVING
        chroma.start()
        for name in retrieval:
            _becomes(server.address, name, SERVING)
    finally:
        server.stop()
        chroma.stop()
