"""Two state-service replicas on one PostgreSQL: a write acknowledged by one replica is what the other
returns on the very next call, for every kind of write and every scope. PostgreSQL reads take a
direct path (one prepared statement on asyncpg, no cache: sessionkit_server.common.pg_reads), and
this is the property that path must keep: replicas share no memory, only the database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sessionkit import Session
from sessionkit_server.common.config import ServerSettings
from tests.servers import ServerThread


@pytest.fixture(scope="module")
def replicas(pg_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerThread]]:
    threads = []
    for name in ("a", "b"):
        settings = ServerSettings(
            port=0,
            data_dir=tmp_path_factory.mktemp(f"replica-{name}"),
            database_url=pg_database,
            services=["state"],
            log_format="text",
        )
        threads.append(ServerThread(settings).start())
    yield threads
    for thread in threads:
        thread.stop()


def _pair(replicas: list[ServerThread], session_id: str) -> tuple[Session, Session]:
    a = Session(session_id, user_id="ada", app_name="replicas", address=replicas[0].address)
    b = Session(session_id, user_id="ada", app_name="replicas", address=replicas[1].address)
    return a, b


def test_each_write_through_one_replica_is_read_through_the_other_on_the_next_call(
    replicas: list[ServerThread],
) -> None:
    a, b = _pair(replicas, "ping-pong")
    try:
        for i in range(30):
            # Both replicas read after every write, so each has just served the value the next
            # write (through either of them) replaces.
            (a if i % 2 == 0 else b).set_state("n", i)
            assert b.get_state("n") == i
            assert a.get_state("n") == i
            assert b.restore_state()["n"] == i
        # A state both replicas served before (their encoded replies of it are kept), written back
        # through one of them: the other answers it with the new version, and then the next change.
        version = b.set_state("n", 0)
        assert (a.get_state("n"), a.state_version()) == (0, version)
        a.set_state("n", 1)
        assert b.get_state("n") == 1
        # Every kind of write and the user and app scopes, each read back at once on the other replica.
        assert (a.get_state("count"), b.get_state("count")) == (None, None)
        a.increment_state("count", 5)
        assert b.get_state("count") == 5
        b.save_state({"plan": "pro", "user:lang": "en", "app:motd": "hi"})
        assert a.restore_state() == {"plan": "pro", "user:lang": "en", "app:motd": "hi"}
        a.delete_state("plan")
        assert b.get_state("plan") is None
        other = Session("other", user_id="ada", app_name="replicas", address=replicas[1].address)
        assert a.get_state("user:lang") == "en"
        other.set_state("user:lang", "fr")
        assert a.get_state("user:lang") == "fr"
        other.close()
    finally:
        a.close()
        b.close()


def test_a_session_deleted_through_one_replica_is_gone_through_the_other(
    replicas: list[ServerThread],
) -> None:
    a, b = _pair(replicas, "short-lived")
    try:
        a.set_state("k", 1)
        assert b.get_state("k") == 1
        assert a.delete()
        # The other replica's very next read finds no value: the deleted session is not served from
        # anything it remembered.
        assert b.get_state("k") is None
    finally:
        a.close()
        b.close()
