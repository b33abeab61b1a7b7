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
from sessionkit.errors import RateLimited as ServerRateLimited
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
