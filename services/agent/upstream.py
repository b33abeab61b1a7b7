"""What the agent service calls: the state, memory and knowledge services (over gRPC, through the SDK's
clients, like any other caller, so a replica of it can run anywhere) and the LLM."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sessionkit.knowledge_client import KnowledgeClient
from sessionkit.memory_client import MemoryClient
from sessionkit.state_client import StateClient
from sessionkit_server.agent.llm import ChatModel

#: The API key of the call being served: the service calls the other services with the caller's own
#: key, so their auth checks apply to what the agent does on the caller's behalf.
caller_key: contextvars.ContextVar[str | None] = contextvars.ContextVar("caller_key", default=None)


@dataclass
class Upstream:
    state: StateClient
    memory: MemoryClient | None
    knowledge: KnowledgeClient | None


class Upstreams:
    """The clients of the other services, one set per caller key, made on first use."""

    def __init__(self, upstream: Upstream | Callable[[str | None], Upstream]) -> None:
        self._make = upstream if callable(upstream) else (lambda _key: upstream)
        self._made: dict[str | None, Upstream] = {}

    def current(self) -> Upstream:
        """The clients with the current caller's key."""
        key = caller_key.get()
        found = self._made.get(key)
        if found is None:
            found = self._made[key] = self._make(key)
        return found


class LLMRouter(Protocol):
    """Which ChatModel serves a model name (and which name the default is)."""

    async def resolve(self, requested: str) -> tuple[ChatModel, str]: ...

    def check(self, requested: str) -> None: ...

    def budget(self, requested: str, max_tokens: int) -> int | None: ...

    def default_max_tokens(self) -> int: ...
