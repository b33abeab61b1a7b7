"""The one retry policy of the SDK (tenacity), used by the gRPC transport and the remote (HTTP) client
alike: jittered, truncated exponential backoff on transient errors, bounded attempts and one overall
deadline; the sleep and the clock are injectable so tests run fast.

Transient: UNAVAILABLE and DEADLINE_EXCEEDED (over HTTP: a connection that failed, 502/503/504, a
timeout), and RESOURCE_EXHAUSTED only when the server says when to retry (google.rpc.RetryInfo, or
HTTP 429 with or without Retry-After: a rate limit refuses before any work is done). A call that is
not safe to repeat (no idempotency key) is retried only when its request never left this process. A
payload that is too large is never retried. An error that a service reports about its own upstream
after retrying it (an LLM that is down or keeps rate limiting: reason LLM_UNAVAILABLE,
LLM_RATE_LIMITED or EXTRACTION_LLM_UNAVAILABLE) is not retried again: the service already did.

The policy never sleeps past the call's deadline: when the next wait (the backoff, or the server's
RetryInfo / Retry-After delay when that is longer) would end after the deadline, the last error (the
server's own) is raised at once, rather than waiting for nothing and reporting DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_random_exponential,
)

from sessionkit import reasons
from sessionkit.errors import DeadlineExceeded, ResourceExhausted, ServiceUnavailable

T = TypeVar("T")

#: UNAVAILABLE reasons of a service's upstream that the service itself already retried.
UPSTREAM_GAVE_UP = frozenset(
    r.name for r in (reasons.LLM_UNAVAILABLE, reasons.LLM_RATE_LIMITED, reasons.EXTRACTION_LLM_UNAVAILABLE)
)
#: Reasons of failures that stay as they are however often they are tried (a bad certificate, a server
#: that does not speak the protocol, storage mounted read-only).
PERMANENT = frozenset(
    r.name for r in (reasons.BAD_REMOTE_RESPONSE, reasons.TLS_FAILED, reasons.STORAGE_READ_ONLY)
)
#: Reasons of a call refused before any work was done (a server draining after SIGTERM): safe to repeat
#: even without an idempotency key.
REFUSED_UNSTARTED = frozenset({reasons.SERVER_DRAINING.name})
#: The shortest time worth starting an attempt with: less than this left after a wait means the wait
#: would use up the deadline.
MIN_ATTEMPT_SECONDS = 0.01


def is_transient(error: BaseException, idempotent: bool = True) -> bool:
    """Whether ``error`` may go away on its own, so the call is worth repeating. ``idempotent``: the
    call is safe to repeat (a read, or a write with an idempotency key); otherwise it is repeated only
    when the request was never sent (``error.sent is False``) or refused before any work (a rate limit)."""
    reason = getattr(error, "reason", None)
    if reason in UPSTREAM_GAVE_UP or reason in PERMANENT:
        return False
    if reason in REFUSED_UNSTARTED:
        return True
    if isinstance(error, ResourceExhausted):
        return error.retry_after is not None
    if isinstance(error, (ServiceUnavailable, DeadlineExceeded)):
        return idempotent or getattr(error, "sent", True) is False
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """How one SDK call is retried. ``deadline``: the whole call's budget in seconds, retries
    included (the Session's ``timeout``). ``sleep``/``clock``: injectable for tests."""

    max_attempts: int = 8
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    deadline: float = 30.0
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)

    def with_deadline(self, deadline: float) -> RetryPolicy:
        return replace(self, deadline=deadline)

    async def call(
        self,
        attempt: Callable[[float], Awaitable[T]],
        *,
        idempotent: bool = True,
        before_retry: Callable[[BaseException], Awaitable[None]] | None = None,
        deadline_error: Callable[[], Exception] | None = None,
    ) -> T:
        """Run ``attempt(seconds_left)`` until it succeeds, fails for good, attempts run out, or the
        next wait would pass the deadline (then the last error is raised). ``before_retry`` runs before
        each new attempt (the embedded transport restarts its server there); ``deadline_error``: what
        to raise when no time is left to even start an attempt (default DeadlineExceeded)."""
        deadline = self.clock() + self.deadline
        # The first attempt runs without tenacity: a call that succeeds (nearly all) does not pay for
        # building the retry machinery (about a tenth of the SDK's own time per call). Its failure is
        # handed to the same loop as attempt 1, so waits, stops and retries are exactly as before.
        remaining = deadline - self.clock()
        if remaining <= 0:
            if deadline_error is not None:
                raise deadline_error()
            raise reasons.DEADLINE_EXCEEDED.error(detail=f"no answer within the {self.deadline:g}s deadline")
        try:
            return await attempt(remaining)
        except Exception as error:
            first_error: BaseException | None = error
        retrying = AsyncRetrying(
            stop=_Stop(self, deadline),
            wait=_Wait(self),
            retry=retry_if_exception(lambda error: is_transient(error, idempotent)),
            sleep=self.sleep,
            reraise=True,
        )
        last_error: BaseException | None = None
        async for attempt_state in retrying:
            with attempt_state:
                if first_error is not None:  # attempt 1, already made: its outcome
                    last_error, first_error = first_error, None
                    raise last_error
                if last_error is not None and before_retry is not None:
                    await before_retry(last_error)
                remaining = deadline - self.clock()
                if remaining <= 0:
                    if deadline_error is not None:
                        raise deadline_error()
                    raise reasons.DEADLINE_EXCEEDED.error(
                        detail=f"no answer within the {self.deadline:g}s deadline"
                    )
                try:
                    return await attempt(remaining)
                except Exception as error:
                    last_error = error
                    raise
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover


class _Wait:
    """Full-jitter exponential backoff, but never sooner than the server's RetryInfo / Retry-After."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.backoff = wait_random_exponential(multiplier=policy.initial_backoff, max=policy.max_backoff)

    def __call__(self, state: RetryCallState) -> float:
        delay = float(self.backoff(state))
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        return max(delay, retry_after) if retry_after else delay


class _Stop:
    """Stop when attempts run out, or when the coming wait would leave no time for another attempt.
    tenacity computes the wait before asking (``upcoming_sleep``), so a RetryInfo delay longer than
    the time left stops here and the server's error is raised instead of sleeping past the deadline."""

    def __init__(self, policy: RetryPolicy, deadline: float) -> None:
        self.policy = policy
        self.deadline = deadline

    def __call__(self, state: RetryCallState) -> bool:
        if state.attempt_number >= self.policy.max_attempts:
            return True
        left = self.deadline - self.policy.clock()
        return state.upcoming_sleep + MIN_ATTEMPT_SECONDS > left
