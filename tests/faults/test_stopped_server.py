"""A server that stops answering (SIGSTOP: the process is alive, its sockets stay open, nothing is
answered, nothing is closed) fails every SDK call and stream, over gRPC and through the gateway, within
its deadline and with a typed error, instead of hanging; after SIGCONT the same sessions work again.

Streams have no deadline of their own: the gRPC channel's keepalive pings (SESSIONKIT_KEEPALIVE_SECONDS
and SESSIONKIT_KEEPALIVE_TIMEOUT) end a watch whose server stopped, and the gateway's SSE heartbeats
(SESSIONKIT_SSE_HEARTBEAT_SECONDS) let the SDK end a remote watch that went silent. A quiet stream of a
live server is never ended by either."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import httpx
import pytest

from sessionkit import AsyncSession
from sessionkit.errors import DeadlineExceeded, ServiceUnavailable, SessionKitError
from sessionkit.state_client import StateChange
from tests.faults.conftest import HEARTBEAT
from tests.faults.support import Served

pytestmark = pytest.mark.slow

KEEPALIVE = 1.0  # the SDK's keepalive ping interval, and its wait for the answer
DEADLINE = 3.0  # every call's timeout (Session(timeout=))
#: How late a failure may come after its bound (a loaded CI machine, gRPC's timers' granularity).
SLACK = 2.5


@pytest.fixture(autouse=True)
def _keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSIONKIT_KEEPALIVE_SECONDS", str(KEEPALIVE))
    monkeypatch.setenv("SESSIONKIT_KEEPALIVE_TIMEOUT", str(KEEPALIVE))


async def _failure(name: str, pending: Awaitable[Any], since: float) -> tuple[str, float, SessionKitError]:
    """How long after ``since`` the call failed, and with what; a call that succeeds, or that is still
    waiting after 30 s (a hang), fails the test."""
    try:
        result = await asyncio.wait_for(pending, 30)
    except SessionKitError as error:
        return name, time.monotonic() - since, error
    except TimeoutError:
        raise AssertionError(f"{name}: still waiting 30 s after the server stopped") from None
    raise AssertionError(f"{name}: answered {result!r} while the server was stopped")


async def test_a_stopped_server_fails_every_call_and_stream_within_its_deadline_then_recovers(
    served: Served,
) -> None:
    agent_url = f"{served.url}/agent"
    # The server's first calls (the gateway's upstream channel, lazy imports) take their time.
    async with (
        AsyncSession("stopped", user_id="u", address=served.address) as warm,
        AsyncSession("stopped", user_id="u", agent_url=agent_url) as warm_remote,
    ):
        await warm.set_state("n", 1)
        await warm_remote.get_state("n")
    async with (
        AsyncSession("stopped", user_id="u", address=served.address, timeout=DEADLINE) as direct,
        AsyncSession("stopped", user_id="u", agent_url=agent_url, timeout=DEADLINE) as remote,
        AsyncSession("stopped", user_id="u", address=served.address, timeout=DEADLINE) as direct2,
        AsyncSession("stopped", user_id="u", agent_url=agent_url, timeout=DEADLINE) as remote2,
    ):
        await direct.get_state("n")
        await remote.get_state("n")
        await remote2.get_state("n")  # both sessions' connections are open before the stop
        await direct2.get_state("n")
        grpc_watch, rest_watch = direct.watch_state(), remote.watch_state()
        assert (await anext(grpc_watch)).state == {"n": 1}
        assert (await anext(rest_watch)).state == {"n": 1}
        grpc_next = asyncio.ensure_future(anext(grpc_watch))
        rest_next = asyncio.ensure_future(anext(rest_watch))
        # Quiet but alive: several keepalive rounds and heartbeat intervals end neither stream.
        await asyncio.sleep(2 * (2 * KEEPALIVE) + 1)
        assert not grpc_next.done() and not rest_next.done(), (grpc_next, rest_next)

        os.kill(served.child.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            calls: list[tuple[str, Awaitable[Any], float]] = [
                ("gRPC read", direct2.get_state("n"), DEADLINE),
                ("gRPC write", direct2.increment_state("n"), DEADLINE),
                ("gRPC new watch", anext(direct2.watch_state()), DEADLINE),
                ("gRPC open watch", grpc_next, 2 * KEEPALIVE),
                ("REST read", remote2.get_state("n"), DEADLINE),
                ("REST write", remote2.increment_state("n"), DEADLINE),
                ("REST new watch", anext(remote2.watch_state()), DEADLINE),
                ("REST open watch", rest_next, 3 * HEARTBEAT),
            ]
            bounds = {name: bound for name, _, bound in calls}
            failures = await asyncio.gather(*(_failure(name, call, stopped) for name, call, _ in calls))
        finally:
            os.kill(served.child.pid, signal.SIGCONT)
        for name, seconds, error in failures:
            assert isinstance(error, (DeadlineExceeded, ServiceUnavailable)), (name, error)
            assert seconds <= bounds[name] + SLACK, f"{name} failed after {seconds:.1f}s: {error}"
            assert str(error), name  # says what happened
        assert "went silent" in str(dict((n, e) for n, _, e in failures)["REST open watch"])

        # The same sessions work again once the server runs, and new watches see new writes.
        await grpc_watch.aclose()  # type: ignore[attr-defined]
        await rest_watch.aclose()  # type: ignore[attr-defined]
        await _resumed(direct, remote)


async def _resumed(direct: AsyncSession, remote: AsyncSession) -> None:
    # The writes sent while the server was stopped were queued in its sockets: they may be applied
    # now, after their callers gave up (what idempotency keys are for). Whatever they did, a new
    # write is seen by new watches on both transports.
    grpc_watch, rest_watch = direct.watch_state(), remote.watch_state()
    assert (await anext(grpc_watch)).operation == "SNAPSHOT"
    assert (await anext(rest_watch)).operation == "SNAPSHOT"
    value = await remote.increment_state("n", 100)
    assert await direct.get_state("n") >= value
    for watch in (grpc_watch, rest_watch):
        change: StateChange | None = None
        while change is None or change.value != value:
            change = await asyncio.wait_for(anext(watch), 10)
            assert change.operation in ("INCREMENT", "SNAPSHOT"), change
        await watch.aclose()  # type: ignore[attr-defined]


async def test_the_gateway_announces_and_sends_heartbeats_on_a_quiet_watch(served: Served) -> None:
    """What a non-SDK client relies on: the interval in a header, and a comment line at that pace."""
    async with AsyncSession("quiet", agent_url=f"{served.url}/agent") as session:
        await session.set_state("a", 1)
    async with (
        httpx.AsyncClient(base_url=served.url, timeout=10) as http,
        http.stream("GET", "/v1/sessions/quiet/watch", headers={"Accept": "text/event-stream"}) as reply,
    ):
        assert reply.headers["sessionkit-heartbeat"] == f"{HEARTBEAT:g}"
        lines: AsyncIterator[str] = reply.aiter_lines()
        start = time.monotonic()
        heartbeats = 0
        while heartbeats < 3:
            line = await asyncio.wait_for(anext(lines), 3 * HEARTBEAT + SLACK)
            heartbeats += line == ": heartbeat"
        # Three heartbeats, not sent faster than their interval (the first comes one interval after
        # the snapshot).
        assert time.monotonic() - start >= 3 * HEARTBEAT * 0.9
