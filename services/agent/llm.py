"""The agent's LLM: any OpenAI-compatible chat completions endpoint through the ``openai`` client.

- One call (:meth:`ChatModel.complete`) is one LLM round: text, or tool calls, with token usage. With
  ``on_delta`` it streams: each text piece is handed on as soon as it arrives (no buffering), and tool
  call fragments are assembled.
- Transport: ``openai.AsyncOpenAI`` with a timeout and no retries of its own; tenacity retries
  connection errors, timeouts, 408, 409, 429 and 5xx with jittered exponential backoff, waiting what a
  429/503's ``Retry-After`` asks for. A streamed call is retried only until its first piece was handed
  on (after that the caller has shown text, and a retry would show it twice).
- Errors name the endpoint and the model: ``ServiceUnavailable`` (reason ``LLM_UNAVAILABLE``) when it
  cannot be reached or keeps failing, ``RateLimited`` (reason ``LLM_RATE_LIMITED``, with retry_after) when
  it keeps answering 429, ``ResourceExhausted`` (reason ``CONTEXT_TOO_LONG``) when the prompt does not
  fit, ``FailedPrecondition`` (reason ``LLM_REJECTED``) for other refusals (a bad key, an unknown model).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from sessionkit.errors import (
    FailedPrecondition,
    RateLimited,
    ResourceExhausted,
    ServiceUnavailable,
    SessionKitError,
)
from sessionkit_server.memory.extraction import _transient, retry_after_seconds

if TYPE_CHECKING:
    import openai

OnDelta = Callable[[str], Awaitable[None]]


@dataclass
class ToolCallRequest:
    """A function call the model asked for."""

    id: str
    name: str
    arguments: str


@dataclass
class LLMReply:
    text: str
    tool_calls: list[ToolCallRequest] = field(default_factory=list)
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Started(Exception):
    """A streamed call failed after handing on text: not retried."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _context_too_long(error: openai.APIStatusError) -> bool:
    text = str(error.message).lower()
    return error.status_code in (400, 413) and ("context" in text and ("length" in text or "window" in text))


class ChatModel:
    """Chat completions on one OpenAI-compatible endpoint."""

    def __init__(
        self,
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

        self.max_attempts = max_attempts
        self.max_retry_after = max_retry_after
        self.sleep = sleep
        self._backoff = wait_random_exponential(multiplier=initial_backoff, max=max_backoff)
        # A local server often needs no key, but the client insists on one.
        key = api_key or os.environ.get("OPENAI_API_KEY") or "no-key"
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=0)
        self.base_url = str(self._client.base_url)

    async def close(self) -> None:
        await self._client.close()

    def _wait(self, state: RetryCallState) -> float:
        import openai

        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, openai.APIStatusError) and error.status_code in (429, 503):
            asked = retry_after_seconds(error.response.headers)
            if asked is not None:
                return min(asked, self.max_retry_after)
        return float(self._backoff(state))

    def _error(self, error: BaseException, model: str, attempts: int) -> SessionKitError:
        import openai

        where = f"the LLM at {self.base_url} (model {model!r})"
        metadata = {"base_url": self.base_url, "model": model}
        if isinstance(error, openai.APIStatusError):
            status = error.status_code
            metadata["status"] = str(status)
            detail = str(error.message)[:300]
            if status == 429:
                return RateLimited(
                    f"{where} is rate limiting (429, {attempts} attempts): {detail}",
                    reason="LLM_RATE_LIMITED",
                    metadata=metadata,
                    retry_after=retry_after_seconds(error.response.headers) or 1.0,
                )
            if _transient(error):
                return ServiceUnavailable(
                    f"{where} answered {status} ({attempts} attempts): {detail}",
                    reason="LLM_UNAVAILABLE",
                    metadata=metadata,
                )
            if _context_too_long(error):
                return ResourceExhausted(
                    f"the prompt does not fit the context of {where}: {detail}",
                    reason="CONTEXT_TOO_LONG",
                    metadata=metadata,
                )
            return FailedPrecondition(
                f"{where} refused the request ({status}): {detail}; check the model name "
                "(SESSIONKIT_MODEL or the agent's llm=) and the key (OPENAI_API_KEY)",
                reason="LLM_REJECTED",
                metadata=metadata,
            )
        if isinstance(error, openai.APIConnectionError):
            return ServiceUnavailable(
                f"{where} could not be reached ({attempts} attempts): {error}; check OPENAI_BASE_URL",
                reason="LLM_UNAVAILABLE",
                metadata=metadata,
            )
        return ServiceUnavailable(f"{where} failed: {error}", reason="LLM_UNAVAILABLE", metadata=metadata)

    async def complete(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        params: dict[str, Any] | None = None,
        on_delta: OnDelta | None = None,
    ) -> LLMReply:
        """One LLM round. ``params``: temperature, max_tokens and other request fields."""
        import openai

        request: dict[str, Any] = {"model": model, "messages": messages, **(params or {})}
        if tools:
            request["tools"] = tools
        retrying = AsyncRetrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            sleep=self.sleep,
            reraise=True,
        )
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    if on_delta is None:
                        return await self._once(request)
                    return await self._streamed(request, on_delta)
        except _Started as started:
            raise self._error(started.error, model, attempts) from started.error
        except (openai.OpenAIError, ValueError) as error:
            raise self._error(error, model, attempts) from error
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _once(self, request: dict[str, Any]) -> LLMReply:
        response = await self._client.chat.completions.create(**request)
        if not response.choices:
            raise ValueError("the answer has no choices")
        choice = response.choices[0]
        calls = [
            ToolCallRequest(c.id, c.function.name, c.function.arguments or "")
            for c in (choice.message.tool_calls or [])
            if c.type == "function"
        ]
        usage = response.usage
        return LLMReply(
            choice.message.content or "",
            calls,
            choice.finish_reason or "stop",
            usage.prompt_tokens if usage else 0,
            usage.completion_tokens if usage else 0,
        )

    async def _streamed(self, request: dict[str, Any], on_delta: OnDelta) -> LLMReply:
        import openai

        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        finish = "stop"
        prompt_tokens = completion_tokens = 0
        try:
            stream = await self._client.chat.completions.create(
                **request, stream=True, stream_options={"include_usage": True}
            )
            async with stream:
                async for chunk in stream:
                    if chunk.usage is not None:
                        prompt_tokens = chunk.usage.prompt_tokens
                        completion_tokens = chunk.usage.completion_tokens
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    delta = choice.delta
                    if delta.content:
                        text.append(delta.content)
                        await on_delta(delta.content)
                    for piece in delta.tool_calls or []:
                        call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
                        if piece.id:
                            call["id"] = piece.id
                        if piece.function is not None:
                            call["name"] += piece.function.name or ""
                            call["arguments"] += piece.function.arguments or ""
                    if choice.finish_reason:
                        finish = choice.finish_reason
        except (openai.OpenAIError, ValueError, json.JSONDecodeError) as error:
            if text:
                raise _Started(error) from error
            raise
        tool_calls = [
            ToolCallRequest(c["id"] or f"call_{i}", c["name"], c["arguments"])
            for i, c in sorted(calls.items())
        ]
        return LLMReply("".join(text), tool_calls, finish, prompt_tokens, completion_tokens)
