"""Retries for every SDK call (tenacity): jittered, truncated exponential backoff on transient errors,
bounded attempts and one overall deadline; the sleep is injectable so tests run fast.

Transient: UNAVAILABLE and DEADLINE_EXCEEDED, and RESOURCE_EXHAUSTED only when the server says when to
retry (google.rpc.RetryInfo, e.g. a rate limit). A payload that is too large is never retried. An
error that a service reports about its own upstream after retrying it (an LLM that is down or keeps
rate limiting: reason LLM_UNAVAILABLE, LLM_RATE_LIMITED or EXTRACTION_LLM_UNAVAILABLE) is not retried
again: the service already did.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from sessionkit import reasons
from sessionkit.errors import DeadlineExceeded, ResourceExhausted, ServiceUnavailable

T = TypeVar("T")


#: UNAVAILABLE reasons of a service's upstream that the service itself already retried.
UPSTREAM_GAVE_UP = frozenset(
    r.name for r in (reasons.LLM_UNAVAILABLE, reasons.LLM_RATE_LIMITED, reasons.EXTRACTION_LLM_UNAVAILABLE)
)


def is_transient(error: BaseException) -> bool:
    if getattr(error, "reason", None) in UPSTREAM_GAVE_UP:
        return False
    if isinstance(error, (ServiceUnavailable, DeadlineExceeded)):
        return True
    return isinstance(error, ResourceExhausted) and error.retry_after is not None


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    #: Overall deadline of one SDK call, retries included (the Session's ``timeout``).
    deadline: float = 30.0
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, compare=False)

    def with_deadline(self, deadline: float) -> RetryPolicy:
        return RetryPolicy(self.max_attempts, self.initial_backoff, self.max_backoff, deadline, self.sleep)


class _Wait:
    """Full-jitter exponential backoff, but never sooner than the server's RetryInfo delay."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.backoff = wait_random_exponential(multiplier=policy.initial_backoff, max=policy.max_backoff)

    def __call__(self, state: RetryCallState) -> float:
        delay = float(self.backoff(state))
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        return max(delay, retry_after) if retry_after else delay


async def call_with_retry(
    attempt: Callable[[float], Awaitable[T]],
    policy: RetryPolicy,
    before_retry: Callable[[BaseException], Awaitable[None]] | None = None,
) -> T:
    """Run ``attempt(remaining_seconds)`` until it succeeds, fails for good, or the deadline passes.
    ``before_retry`` runs before each new attempt (the embedded transport restarts its server there)."""
    deadline = time.monotonic() + policy.deadline
    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.max_attempts) | stop_after_delay(policy.deadline),
        wait=_Wait(policy),
        retry=retry_if_exception(is_transient),
        sleep=policy.sleep,
        reraise=True,
    )
    last_error: BaseException | None = None
    async for attempt_state in retrying:
        with attempt_state:
            if last_error is not None and before_retry is not None:
                await before_retry(last_error)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise reasons.DEADLINE_EXCEEDED.error(
                    detail=f"no answer within the {policy.deadline:g}s deadline"
                )
            try:
                return await attempt(remaining)
            except Exception as error:
                last_error = error
                raise
    raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover
