"""The agent's LLM: any OpenAI-compatible chat completions endpoint through the ``openai`` client.

- One call (:meth:`ChatModel.complete`) is one LLM round: text, or tool calls, with token usage. With
  ``on_delta`` it streams: each text piece is handed on as soon as it arrives (no buffering), and tool
  call fragments are assembled.
- Transport: sessionkit_server.common.llm (shared with memory's fact extraction): tenacity retries
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sessionkit import reasons
from sessionkit_server.common.llm import LLMClient, NotRetried, Reasons

OnDelta = Callable[[str], Awaitable[None]]
REASONS = Reasons(
    unavailable=reasons.LLM_UNAVAILABLE,
    rejected=reasons.LLM_REJECTED,
    rate_limited=reasons.LLM_RATE_LIMITED,
    context_too_long=reasons.CONTEXT_TOO_LONG,
    unreachable_hint="check OPENAI_BASE_URL",
)


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
        self._llm = LLMClient(
            REASONS,
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_attempts=max_attempts,
            initial_backoff=initial_backoff,
            max_backoff=max_backoff,
            max_retry_after=max_retry_after,
            sleep=sleep,
        )
        self._client = self._llm.client
        self.base_url = self._llm.base_url

    async def close(self) -> None:
        await self._llm.close()

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
        request: dict[str, Any] = {"model": model, "messages": messages, **(params or {})}
        if tools:
            request["tools"] = tools

        async def attempt() -> LLMReply:
            if on_delta is None:
                return await self._once(request)
            return await self._streamed(request, on_delta)

        return await self._llm.call(model, attempt)

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
                raise NotRetried(error) from error
            raise
        tool_calls = [
            ToolCallRequest(c["id"] or f"call_{i}", c["name"], c["arguments"])
            for i, c in sorted(calls.items())
        ]
        return LLMReply("".join(text), tool_calls, finish, prompt_tokens, completion_tokens)
