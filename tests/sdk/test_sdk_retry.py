"""Retries: transient failures are retried with backoff and idempotency keys make retried writes
apply once; errors that retrying cannot fix are raised at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from sessionkit import (
    InvalidArgument,
    RateLimited,
    ResourceExhausted,
    RetryPolicy,
    ServiceUnavailable,
    Session,
)
from sessionkit.config import ClientSettings
from sessionkit.errors import RateLimited as ServerRateLimited
from sessionkit.state_client import SessionRef, StateClient
from sessionkit.transport import Transport
from sessionkit_server.common.config import ServerSettings
from tests.conftest import free_port
from tests.servers import ServerThread


class Sleeps:
    """An injectable sleep that records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class Flaky(grpc.aio.ServerInterceptor):
    """Fails the first ``failures`` calls of ``methods``: after applying them (the reply is lost,
    as when a connection drops) or before, with ``error`` or UNAVAILABLE."""

    def __init__(
        self, failures: int, after_apply: bool, methods: set[str], error: Exception | None = None
    ) -> None:
        self.failures = failures
        self.after_apply = after_apply
        self.methods = methods
        self.error = error
        self.calls = 0

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.rsplit("/", 1)[-1] not in self.methods:
            return handler
        inner = handler.unary_unary

        async def flaky(request: Any, context: Any) -> Any:
            self.calls += 1
            if self.failures > 0:
                self.failures -= 1
                if self.after_apply:
                    await inner(request, context)
                if self.error is not None:
                    raise self.error
                await context.abort(grpc.StatusCode.UNAVAILABLE, "injected: connection lost")
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            flaky,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@pytest.fixture
def flaky_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ServerThread, Flaky]]:
    flaky: Flaky = request.param
    settings = ServerSettings(port=0, data_dir=tmp_path, log_format="text")
    thread = ServerThread(settings, interceptors=[flaky]).start()
    yield thread, flaky
    thread.stop()


WRITES = {"SetStateValue", "IncrementState", "AppendState", "AppendEvent", "SaveState"}


@pytest.mark.parametrize("flaky_server", [Flaky(3, after_apply=True, methods=WRITES)], indirect=True)
def test_writes_whose_replies_are_lost_apply_exactly_once(flaky_server: tuple[ServerThread, Flaky]) -> None:
    server, flaky = flaky_server
    sleeps = Sleeps()
    session = Session("retry_once", address=server.address, retry=RetryPolicy(sleep=sleeps))
    assert session.increment_state("n", 5) == 5  # applied on the first call, reply lost 3 times
    assert flaky.calls == 4
    assert len(sleeps.delays) == 3
    assert session.get_state("n") == 5
    flaky.failures = 2
    session.add_event("user", "hello")
    assert [e.content for e in session.get_events()] == ["hello"]
    flaky.failures = 2
    assert session.append_state("items", "a") == 1
    assert session.get_state("items") == ["a"]


@pytest.mark.parametrize("flaky_server", [Flaky(4, after_apply=False, methods=WRITES)], indirect=True)
def test_unavailable_is_retried_with_growing_jittered_backoff(
    flaky_server: tuple[ServerThread, Flaky],
) -> None:
    server, flaky = flaky_server
    sleeps = Sleeps()
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, sleep=sleeps)
    session = Session("retry_before", address=server.address, retry=policy)
    session.set_state("k", "v")
    assert flaky.calls == 5
    assert len(sleeps.delays) == 4
    assert all(0 <= d <= 1.0 for d in sleeps.delays)
    assert session.get_state("k") == "v"


@pytest.mark.parametrize(
    "flaky_server",
    [Flaky(1, after_apply=False, methods=WRITES, error=ServerRateLimited("slow down", retry_after=0.75))],
    indirect=True,
)
def test_rate_limits_are_retried_after_the_servers_delay(flaky_server: tuple[ServerThread, Flaky]) -> None:
    server, _ = flaky_server
    sleeps = Sleeps()
    session = Session("rate_limited", address=server.address, retry=RetryPolicy(sleep=sleeps))
    session.set_state("k", 1)
    assert sleeps.delays and sleeps.delays[0] >= 0.75
    assert session.get_state("k") == 1


@pytest.mark.parametrize(
    "flaky_server",
    [Flaky(1, after_apply=False, methods=WRITES, error=ServerRateLimited("slow down", retry_after=0.5))],
    indirect=True,
)
def test_rate_limited_error_keeps_retry_after_when_attempts_run_out(
    flaky_server: tuple[ServerThread, Flaky],
) -> None:
    server, _ = flaky_server
    session = Session("rate_out", address=server.address, retry=RetryPolicy(max_attempts=1, sleep=Sleeps()))
    with pytest.raises(RateLimited) as info:
        session.set_state("k", 1)
    assert info.value.retry_after == pytest.approx(0.5)


def test_too_large_and_invalid_are_never_retried(sqlite_server: ServerThread) -> None:
    sleeps = Sleeps()
    session = Session("no_retry", address=sqlite_server.address, retry=RetryPolicy(sleep=sleeps))
    with pytest.raises(ResourceExhausted):
        session.save_state({"huge": "x" * (5 << 20)})  # over the server's 4 MiB message limit
    with pytest.raises(InvalidArgument):
        session.set_state("", 1)  # empty key
    assert sleeps.delays == []


def test_unreachable_server_gives_service_unavailable_after_bounded_attempts() -> None:
    sleeps = Sleeps()
    session = Session(
        "nowhere",
        address=f"127.0.0.1:{free_port()}",
        timeout=5,
        retry=RetryPolicy(max_attempts=4, sleep=sleeps),
    )
    with pytest.raises(ServiceUnavailable):
        session.get_state("k")
    assert len(sleeps.delays) == 3


class Clock:
    """A virtual clock that the injected sleep advances: retries see time pass without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.delays: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        self.now += delay


@pytest.mark.parametrize(
    "flaky_server",
    [Flaky(1, after_apply=False, methods=WRITES, error=ServerRateLimited("slow down", retry_after=60))],
    indirect=True,
)
def test_a_retry_delay_past_the_deadline_raises_the_servers_error_at_once(
    flaky_server: tuple[ServerThread, Flaky],
) -> None:
    server, flaky = flaky_server
    sleeps = Sleeps()
    session = Session("rate_past", address=server.address, timeout=2, retry=RetryPolicy(sleep=sleeps))
    with pytest.raises(RateLimited) as info:
        session.set_state("k", 1)
    # The server asked for 60 s and the call had 2: no sleep, and the server's own error, not a
    # DEADLINE_EXCEEDED after waiting for nothing.
    assert sleeps.delays == []
    assert info.value.retry_after == pytest.approx(60)
    assert flaky.calls == 1


@pytest.mark.parametrize(
    "flaky_server",
    [Flaky(5, after_apply=False, methods=WRITES, error=ServerRateLimited("slow down", retry_after=0.8))],
    indirect=True,
)
def test_retries_stop_before_the_sleep_that_would_pass_the_deadline(
    flaky_server: tuple[ServerThread, Flaky],
) -> None:
    server, flaky = flaky_server
    clock = Clock()
    policy = RetryPolicy(max_backoff=0.1, sleep=clock.sleep, clock=clock)
    session = Session("rate_clock", address=server.address, timeout=2, retry=policy)
    with pytest.raises(RateLimited):
        session.set_state("k", 1)
    # 0.8 s twice fits in 2 s; a third wait would end at 2.4 s, past the deadline.
    assert clock.delays == [pytest.approx(0.8), pytest.approx(0.8)]
    assert clock.now - 1000.0 <= 2
    assert flaky.calls == 3


def _state_client(address: str, sleeps: Sleeps, max_attempts: int = 8) -> StateClient:
    policy = RetryPolicy(max_attempts=max_attempts, deadline=10, sleep=sleeps)
    return StateClient(Transport(ClientSettings(), address, Path("unused"), policy))


@pytest.mark.parametrize(
    "flaky_server", [Flaky(1, after_apply=True, methods={"DeleteSession"})], indirect=True
)
async def test_a_write_without_idempotency_key_is_not_repeated_after_it_was_sent(
    flaky_server: tuple[ServerThread, Flaky],
) -> None:
    server, flaky = flaky_server
    sleeps = Sleeps()
    client = _state_client(server.address, sleeps)
    ref = SessionRef("default", "u", "no_key")
    await client.create_session(ref)
    # DeleteSession has no idempotency key: repeating it after a lost reply would answer NOT_FOUND
    # for a session this very call deleted. The lost reply's UNAVAILABLE is what the caller sees.
    with pytest.raises(ServiceUnavailable):
        await client.delete_session(ref)
    assert flaky.calls == 1 and sleeps.delays == []
    # allow_missing makes a repeat harmless: that form is retried.
    await client.create_session(ref)
    flaky.failures = 1
    assert await client.delete_session(ref, allow_missing=True) is False  # the retry found it gone
    assert flaky.calls == 3


async def test_a_request_that_never_left_is_repeated_even_without_a_key() -> None:
    sleeps = Sleeps()
    client = _state_client(f"127.0.0.1:{free_port()}", sleeps, max_attempts=3)
    with pytest.raises(ServiceUnavailable) as info:
        await client.delete_session(SessionRef("default", "u", "s"))
    assert getattr(info.value, "sent", None) is False
    assert len(sleeps.delays) == 2
