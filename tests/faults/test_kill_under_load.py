"""kill -9 of a single server (no replica to fail over to) and a crash of PostgreSQL (``pg_ctl -m
immediate``: no checkpoint, recovery at start), under a continuous mixed load from several client
processes, each keeping a ledger of what was acknowledged (tests/faults/load_client.py). Afterwards
the store holds exactly the ledgers: the shared counter equals the acknowledged increments (none lost,
none applied twice although answers were lost and writes repeated with their idempotency keys), each
client's list and events are its acknowledged ones, in order, once each. While PostgreSQL is down,
calls are refused with DATABASE_UNAVAILABLE (retried), not INTERNAL.

tests/cluster/test_faults.py does the same against replicas behind a round_robin channel (with memory
and Chroma); here every client sees the whole outage."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessionkit.errors import ServiceUnavailable
from sessionkit.state_client import Event, SessionRef
from tests import pg_server
from tests.cluster import support
from tests.faults.load_client import USER
from tests.faults.support import Served
from tests.servers import ROOT, ChildProcess, child_env

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
CLIENTS = 3


@pytest.fixture(scope="module")
def pg() -> Iterator[pg_server.ThrowawayServer]:
    try:
        server = pg_server.ThrowawayServer(crash_safe=True).start()
    except pg_server.PostgresUnavailable as error:
        pytest.fail(f"the kill -9 suite needs a throwaway PostgreSQL server it can crash: {error}")
    try:
        yield server
    finally:
        server.close()


def _acknowledged(ledgers: list[Path]) -> int:
    return sum(len(p.read_text().splitlines()) for p in ledgers if p.exists())


def _progress(ledgers: list[Path], clients: list[ChildProcess], minimum: int = 6) -> None:
    """Until the clients have had ``minimum`` more writes acknowledged (the load goes on between faults)."""
    target = _acknowledged(ledgers) + minimum
    deadline = time.monotonic() + 120
    while _acknowledged(ledgers) < target:
        for client in clients:
            assert client.returncode is None, f"a client failed:\n{client.log()[-3000:]}"
        assert time.monotonic() < deadline, "the load made no progress within 120 s"
        time.sleep(0.1)


def test_nothing_acknowledged_is_lost_or_applied_twice_through_kill9_and_a_postgres_crash(
    tmp_path: Path, pg: pg_server.ThrowawayServer
) -> None:
    server = Served(tmp_path / "data", database_url=pg.dsn)
    session_id = f"load-{uuid.uuid4().hex[:8]}"
    ref = SessionRef("default", USER, session_id)
    asyncio.run(support.state(server.address).create_session(ref))
    stop = tmp_path / "stop"
    ledgers = [tmp_path / f"ledger-{i}" for i in range(CLIENTS)]
    client_command = [sys.executable, "-m", "tests.faults.load_client", server.address, session_id]
    clients = [
        ChildProcess(
            [*client_command, str(i), str(stop), str(ledgers[i])],
            tmp_path / f"client-{i}.log",
            env=child_env(),
            cwd=ROOT,
        )
        for i in range(CLIENTS)
    ]
    try:
        _progress(ledgers, clients)
        server.restart()  # kill -9, then start again on the same port and database
        _progress(ledgers, clients)
        pg.stop("immediate")  # PostgreSQL crashes under the server's open connections
        # Meanwhile a call is refused with a named, retryable error, not INTERNAL.
        with pytest.raises(ServiceUnavailable) as refused:
            asyncio.run(support.state(server.address, deadline=1).get_state(ref))
        assert refused.value.reason == "DATABASE_UNAVAILABLE", refused.value
        pg.start()
        _progress(ledgers, clients)
        server.restart()
        _progress(ledgers, clients)
        stop.touch()  # each client finishes its write in flight (until acknowledged) and exits
        for client in clients:
            assert client.wait(timeout=120) == 0, client.log()[-3000:]
        state, _ = asyncio.run(support.state(server.address).get_state(ref))
        events = asyncio.run(_events(server.address, ref))
    finally:
        for client in clients:
            client.kill()
        server.close()

    lines = [ledger.read_text().splitlines() for ledger in ledgers]
    assert state["counter"] == sum(entries.count("inc") for entries in lines), "increments lost or doubled"
    for index, entries in enumerate(lines):
        appended = [int(e.split()[1]) for e in entries if e.startswith("app ")]
        assert state[f"list-{index}"] == appended, f"client {index}: appends lost or doubled"
        evented = [f"client {index} event {e.split()[1]}" for e in entries if e.startswith("evt ")]
        assert [e.content for e in events if e.author == f"client-{index}"] == evented
    assert server.starts == 3


async def _events(address: str, ref: SessionRef) -> list[Event]:
    state = support.state(address)
    found: list[Event] = []
    token = ""
    while True:
        page, token = await state.list_events(ref, page_token=token)
        found.extend(page)
        if not token:
            return found
