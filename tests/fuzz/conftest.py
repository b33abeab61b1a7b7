"""The servers of the property-based suites of tests/fuzz: all four services, the agent's model a
scripted OpenAI-compatible server that always answers. ``services`` keeps its data in SQLite and is
shared by the package's modules (the embedding model loads once); ``pg_services`` is the same on a
throwaway PostgreSQL database of its own, for the bounded PostgreSQL run of the gRPC fuzz suite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sessionkit_server.common.config import ServerSettings
from tests.conftest import fresh_pg_database
from tests.fuzz.store_dump import Dump, PgDump, dump
from tests.llm_server import LLMServer, Reply
from tests.servers import ServerThread

#: Ingestion bounds of the fuzzed servers: small, so requests over them are cheap to make and the
#: largest accepted ones cheap to embed (tests/fuzz/test_ingestion_fuzz.py sends both).
MAX_TEXT_BYTES = 96 << 10
MAX_FILE_BYTES = 192 << 10


@dataclass
class Services:
    server: ServerThread
    llm: LLMServer
    #: Everything the server stored, to compare before and after a refused request.
    dump: Callable[[], Dump]
    backend: str


def _serve(data_dir: Path, database_url: str = "") -> tuple[ServerThread, LLMServer]:
    llm = LLMServer("test-model").start()
    llm.fallback = lambda request: Reply(content="fuzzed answer")
    server = ServerThread(
        ServerSettings(
            port=0,
            data_dir=data_dir,
            database_url=database_url,
            services=["state", "memory", "knowledge", "agent"],
            log_format="text",
            llm_base_url=llm.base_url,
            llm_model="test-model",
            llm_api_key="sk-test",
            llm_timeout_seconds=10,
            knowledge_fetch_timeout_seconds=5,
            knowledge_max_text_bytes=MAX_TEXT_BYTES,
            knowledge_max_upload_bytes=MAX_FILE_BYTES,
            knowledge_max_url_bytes=MAX_FILE_BYTES,
            # The fuzzed URLs' own web server (tests/fuzz/test_ingestion_fuzz.py); other private
            # addresses stay refused.
            knowledge_allowed_hosts=["127.0.0.1"],
            # The reaper deletes expired sessions on its own schedule: never within a compared request.
            reap_interval_seconds=3600,
        )
    ).start()
    return server, llm


@pytest.fixture(scope="package")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    data_dir = tmp_path_factory.mktemp("fuzz-services") / "data"
    server, llm = _serve(data_dir)
    db_file = next(data_dir.glob("*.db"))
    try:
        yield Services(server, llm, lambda: dump(db_file), "sqlite")
    finally:
        server.stop()
        llm.stop()


@pytest.fixture(scope="package")
def pg_services(tmp_path_factory: pytest.TempPathFactory, pg_admin_dsn: str) -> Iterator[Services]:
    with fresh_pg_database(pg_admin_dsn, "sk_fuzz", "the PostgreSQL fuzz run") as url:
        server, llm = _serve(tmp_path_factory.mktemp("fuzz-pg") / "data", url)
        dumper = PgDump(url)  # after the server's migrations: every table exists
        try:
            yield Services(server, llm, dumper, "postgresql")
        finally:
            dumper.close()
            server.stop()
            llm.stop()
