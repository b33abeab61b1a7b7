"""One OpenAI-compatible LLM client for every service that asks a model (memory's fact extraction, the
agent's chat model): the ``openai`` client with a timeout and no retries of its own, tenacity retries
of connection errors, timeouts, 408, 409, 429 and 5xx with jittered exponential backoff (waiting what a
429/503's ``Retry-After`` asks for instead, capped), and one mapping of what is left to the SDK's errors.
Each caller names its reasons (:class:`Reasons`, entries of the registry ``sessionkit.reasons``, whose
messages they raise), so its errors say which LLM failed."""

from __future__ import annotations

import asyncio
import email.utils
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from sessionkit import reasons
from sessionkit.errors import (
    FailedPrecondition,
    RateLimited,
    ResourceExhausted,
    ServiceUnavailable,
    SessionKitError,
)

if TYPE_CHECKING:
    import openai

T = TypeVar("T")


def retry_after_seconds(headers: Any) -> float | None:
    """A ``Retry-After`` (seconds or an HTTP date) or ``retry-after-ms`` header, in seconds."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def is_transient(error: BaseException) -> bool:
    """Worth another attempt: no answer, or an answer that says "later"."""
    import openai

    if isinstance(error, openai.APIConnectionError):  # includes timeouts
        return True
    if isinstance(error, openai.APIStatusError):
        return error.status_code in (408, 409, 429) or error.status_code >= 500
    return False


def _context_too_long(error: openai.APIStatusError) -> bool:
    text = str(error.message).lower()
    return error.status_code in (400, 413) and ("context" in text and ("length" in text or "window" in text))


#: A registry entry, or its name (looked up in ``sessionkit.reasons`` when the :class:`Reasons` is made).
ReasonRef = reasons.Reason[Any] | str

#: Each role of :class:`Reasons`: the class its reason must raise and the fields its message fills.
_ROLES: dict[str, tuple[type[SessionKitError], frozenset[str]]] = {
    "unavailable": (ServiceUnavailable, frozenset({"where", "problem", "attempts", "detail"})),
    "rejected": (FailedPrecondition, frozenset({"where", "status", "detail"})),
    "rate_limited": (RateLimited, frozenset({"where", "attempts", "detail"})),
    "context_too_long": (ResourceExhausted, frozenset({"where", "detail"})),
}


@dataclass(frozen=True)
class Reasons:
    """The error reasons of one caller: entries of ``sessionkit.reasons`` (a name is looked up there),
    whose templates are the messages (``rejected``'s says what to check). ``rate_limited`` None: a
    persistent 429 is ``unavailable`` (with the server's retry_after); ``context_too_long`` None: such a
    400 is ``rejected``. An unknown name, a reason of the wrong class or a template without the
    role's fields (:data:`_ROLES`) is a ValueError when the caller's module is imported."""

    unavailable: ReasonRef
    rejected: ReasonRef
    rate_limited: ReasonRef | None = None
    context_too_long: ReasonRef | None = None
    #: Checked only: what to check when the endpoint refuses is in ``rejected``'s registered message.
    hint: str = ""
    #: What to check when the endpoint cannot be reached (appended to the error's detail).
    unreachable_hint: str = ""
    #: How errors name the endpoint ("the LLM", "the extraction LLM").
    label: str = "the LLM"

    def __post_init__(self) -> None:
        for role, (cls, fields) in _ROLES.items():
            ref = getattr(self, role)
            if ref is None:
                continue
            entry = reasons.lookup(ref) if isinstance(ref, str) else ref
            if entry is None:
                raise ValueError(f"Reasons.{role}: {ref!r} is not in sessionkit.reasons")
            if not issubclass(entry.exception, cls) or entry.fields != fields:
                raise ValueError(
                    f"Reasons.{role}: {entry.name} must raise {cls.__name__} with a message of the "
                    f"fields {sorted(fields)}, not {entry.exception.__name__} with {sorted(entry.fields)}"
                )
            object.__setattr__(self, role, entry)
        if self.hint and self.hint not in self.entry("rejected").message:
            raise ValueError(
                f"Reasons.hint {self.hint!r} is not in the message of {self.entry('rejected').name}"
            )

    def entry(self, role: str) -> reasons.Reason[SessionKitError]:
        """The registry entry of ``role`` (a key of :data:`_ROLES`; set)."""
        value = getattr(self, role)
        assert isinstance(value, reasons.Reason), role
        return value


class NotRetried(Exception):
    """Raised inside :meth:`LLMClient.call` to end the attempts with ``error`` (e.g. a stream that
    already handed text on: a retry would show it twice)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class LLMClient:
    """Calls to one OpenAI-compatible endpoint, retried and mapped."""

    def __init__(
        self,
        reasons: Reasons,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_attempts: int = 4,
        initial_backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_retry_after: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        import openai

        self.reasons = reasons
        self.max_attempts = max_attempts
        self.max_retry_after = max_retry_after
        self.sleep = sleep
        self._backoff = wait_random_exponential(multiplier=initial_backoff, max=max_backoff)
        # A local server often needs no key, but the client insists on one.
        key = api_key or os.environ.get("OPENAI_API_KEY") or "no-key"
        self.client = openai.AsyncOpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=0)
        self.base_url = str(self.client.base_url)

    async def close(self) -> None:
        await self.client.close()

    def _wait(self, state: RetryCallState) -> float:
        import openai

        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, openai.APIStatusError) and error.status_code in (429, 503):
            asked = retry_after_seconds(error.response.headers)
            if asked is not None:
                return min(asked, self.max_retry_after)
        return float(self._backoff(state))

    async def call(self, model: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()`` until it returns, retrying transient failures; what is left is raised as the
        SDK's error (see :meth:`error`). A ``ValueError`` (an unusable answer) is not retried."""
        import openai

        retrying = AsyncRetrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            sleep=self.sleep,
            reraise=True,
        )
        attempts = 0
        try:
            async for round_ in retrying:
                with round_:
                    attempts += 1
                    return await attempt()
        except NotRetried as stopped:
            raise self.error(stopped.error, model, attempts) from stopped.error
        except (openai.OpenAIError, ValueError) as error:
            raise self.error(error, model, attempts) from error
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def error(self, error: BaseException, model: str, attempts: int) -> SessionKitError:
        """The SDK error for a failure after ``attempts`` attempts, naming the endpoint and the model."""
        import openai

        r = self.reasons
        where = f"{r.label} at {self.base_url} (model {model!r})"
        metadata = {"base_url": self.base_url, "model": model}
        if isinstance(error, openai.APIStatusError):
            status = error.status_code
            metadata["status"] = str(status)
            detail = str(error.message)[:300]
            retry_after = retry_after_seconds(error.response.headers)
            if status == 429 and r.rate_limited is not None:
                return r.entry("rate_limited").error(
                    where=where,
                    attempts=attempts,
                    detail=detail,
                    metadata=metadata,
                    retry_after=retry_after or 1.0,
                )
            if is_transient(error):
                return r.entry("unavailable").error(
                    where=where,
                    problem=f"answered {status}",
                    attempts=attempts,
                    detail=detail,
                    metadata=metadata,
                    retry_after=retry_after if status == 429 else None,
                )
            if r.context_too_long is not None and _context_too_long(error):
                return r.entry("context_too_long").error(where=where, detail=detail, metadata=metadata)
            return r.entry("rejected").error(where=where, status=status, detail=detail, metadata=metadata)
        unavailable = r.entry("unavailable")
        if isinstance(error, openai.APIConnectionError):
            detail = str(error) + (f"; {r.unreachable_hint}" if r.unreachable_hint else "")
            return unavailable.error(
                where=where,
                problem="could not be reached",
                attempts=attempts,
                detail=detail,
                metadata=metadata,
            )
        return unavailable.error(
            where=where, problem="failed", attempts=attempts, detail=error, metadata=metadata
        )
