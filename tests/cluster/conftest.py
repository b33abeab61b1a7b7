"""One topology for the cluster tests (tests/cluster): three replicas of each gRPC service as separate
``sessionkit serve`` processes on 127.0.0.2-4, the gateway, a ``chroma run`` server, on a fresh database of
a throwaway PostgreSQL server (the fault test restarts it: never the shared one), with the test LLM server
as the agent's LLM. Started once for the package and stopped after its last test (not kept up, polling,
through the rest of the suite): 12 processes, 6 of them loading the embedding model."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sessionkit_server.cluster.processes import Cluster
from sessionkit_server.cluster.topology import SERVICES, plan
from tests import pg_server
from tests.cluster.support import free_base_port
from tests.conftest import free_port, fresh_pg_database
from tests.llm_server import LLMServer, Received, Reply

REPLICAS = 3
#: Settings beyond the manifests' (same names, test values): connections re-resolve their targets
#: every few seconds (the scale-up test), and dependencies are checked every second (the fault test).
TEST_ENV = {
    "SESSIONKIT_MAX_CONNECTION_AGE_SECONDS": "3",
    "SESSIONKIT_MAX_CONNECTION_AGE_GRACE_SECONDS": "60",
    "SESSIONKIT_HEALTH_CHECK_INTERVAL_SECONDS": "1",
    "SESSIONKIT_DRAIN_SECONDS": "10",
    # Exact duplicates only (by content hash), no merging of similar texts: the fault test counts
    # the memories it added one by one.
    "SESSIONKIT_MEMORY_MERGE_THRESHOLD": "1.0",
}


@pytest.fixture(scope="package")
def cluster_pg() -> Iterator[pg_server.ThrowawayServer]:
    try:
        server = pg_server.ThrowawayServer().start()
    except pg_server.PostgresUnavailable as error:
        pytest.fail(f"the cluster tests need a throwaway PostgreSQL server: {error}")
    try:
        yield server
    finally:
        server.close()


def echo(request: Received) -> Reply:
    """The agent's LLM: answers "echo: <the user's message>" (a concurrent turn's reply would name
    another message)."""
    found = re.findall(r"message \d+", request.messages[-1].get("content") or "") if request.messages else []
    return Reply(content=f"echo: {found[-1] if found else '?'}")


@pytest.fixture(scope="package")
def llm() -> Iterator[LLMServer]:
    server = LLMServer().start()
    server.fallback = echo
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="package")
def cluster(cluster_pg: pg_server.ThrowawayServer, llm: LLMServer) -> Iterator[Cluster]:
    hosts = [f"127.0.0.{i + 2}" for i in range(REPLICAS)]
    # Not under pytest's basetemp: another pytest run on the machine prunes old basetemps, which
    # would delete the Chroma server's data and the logs from under the running topology.
    run_dir = Path(tempfile.mkdtemp(prefix="sessionkit-cluster-"))
    with fresh_pg_database(cluster_pg.dsn, "sk_cluster", "the cluster tests") as url:
        topology = plan(
            run_dir=run_dir,
            database_url=url,
            replicas=REPLICAS,
            base_port=free_base_port(hosts, len(SERVICES)),
            http_port=free_port(),
            chroma_port=free_port(),
            llm_base_url=llm.base_url,
            secrets={"llm-api-key": "sk-test"},
            extra_env={name: dict(TEST_ENV) for name in (*SERVICES, "gateway")},
        )
        cluster = Cluster(topology)
        cluster.up(timeout=600)
        try:
            yield cluster
        finally:
            cluster.down(timeout=20)
            shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(autouse=True)
async def _close_async_channels() -> AsyncIterator[None]:
    """Channels belong to the test's event loop: close them before the next test's loop."""
    yield
    from sessionkit.transport import close_channels

    await close_channels()
