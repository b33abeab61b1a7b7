"""One server for the property-based suites of tests/fuzz: all four services on SQLite, the agent's
model a scripted OpenAI-compatible server that always answers. Shared by the package's modules, so the
embedding model loads once."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sessionkit_server.common.config import ServerSettings
from tests.llm_server import LLMServer, Reply
from tests.servers import ServerThread


@dataclass
class Services:
    server: ServerThread
    llm: LLMServer
    db_file: Path


@pytest.fixture(scope="package")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    llm = LLMServer("test-model").start()
    llm.fallback = lambda request: Reply(content="fuzzed answer")
    data_dir = tmp_path_factory.mktemp("fuzz-services") / "data"
    server = ServerThread(
        ServerSettings(
            port=0,
            data_dir=data_dir,
            services=["state", "memory", "knowledge", "agent"],
            log_format="text",
            llm_base_url=llm.base_url,
            llm_model="test-model",
            llm_api_key="sk-test",
            llm_timeout_seconds=10,
            knowledge_fetch_timeout_seconds=5,
            # The reaper deletes expired sessions on its own schedule: never within a compared request.
            reap_interval_seconds=3600,
        )
    ).start()
    try:
        yield Services(server, llm, next(data_dir.glob("*.db")))
    finally:
        server.stop()
        llm.stop()
