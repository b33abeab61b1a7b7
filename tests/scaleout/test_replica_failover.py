"""Two state replicas on one PostgreSQL database behind one client channel (an IP list, round_robin):
one is killed with SIGKILL in the middle of a run of writes, and its replacement dies right after
committing a write it never answers; the client retries UNAVAILABLE on the other replica with the same
idempotency key, so every write is applied exactly once."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sessionkit import Session
from tests.conftest import free_port, fresh_pg_database
from tests.servers import ChildProcess, child_env, wait_serving

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

#: Writes before the first kill.
BEFORE_KILL = 50
A, B = "127.0.0.2", "127.0.0.3"


def test_writes_survive_killed_replicas_exactly_once(pg_admin_dsn: str, tmp_path: Path) -> None:
    port = free_port()
    with fresh_pg_database(pg_admin_dsn, "sk_failover", "the failover test") as url:

        def replica(ip: str, name: str, **env: str) -> ChildProcess:
            child = ChildProcess(
                [sys.executable, "-m", "sessionkit.cli", "serve", "--service", "state"],
                tmp_path / f"{name}.log",
                env=child_env(
                    SESSIONKIT_HOST=ip, SESSIONKIT_PORT=str(port), SESSIONKIT_HTTP_PORT="0",
                    SESSIONKIT_DATABASE_URL=url, **env,
                ),
                cwd=tmp_path,
            )  # fmt: skip
            wait_serving(f"{ip}:{port}", timeout=120, child=child)
            return child

        children = [replica(A, "a"), replica(B, "b")]
        try:
            done: list[int] = []
            errors: list[BaseException] = []
            stop = threading.Event()

            def load() -> None:
                try:
                    with Session("failover", "u", address=f"{A}:{port},{B}:{port}", timeout=60) as session:
                        while not stop.is_set():
                            session.append_state("log", len(done))
                            done.append(len(done))
                except BaseException as error:  # reported by the assertion below
                    errors.append(error)

            writer = threading.Thread(target=load)
            writer.start()
            _wait(lambda: len(done) >= BEFORE_KILL or not writer.is_alive(), "the first writes")
            children[0].kill()  # SIGKILL, mid-load
            # Its replacement commits the first write it gets, then dies before answering.
            children.append(replica(A, "a-failpoint", SESSIONKIT_FAILPOINT="state.after_write_commit"))
            _wait(lambda: children[-1].returncode is not None or not writer.is_alive(), "the failpoint")
            after = len(done)
            _wait(lambda: len(done) >= after + 10 or not writer.is_alive(), "writes after the failpoint")
            stop.set()
            writer.join(timeout=300)
            assert not errors, errors
            assert children[-1].returncode == 137  # the failpoint: a committed write never answered
            with Session("failover", "u", address=f"{B}:{port}") as session:
                assert session.get_state("log") == list(range(len(done)))  # none lost, none twice
        finally:
            for child in children:
                child.kill()


def _wait(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.01)
