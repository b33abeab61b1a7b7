"""LLM fact extraction (memory_config provider "mem0"): an OpenAI-compatible chat model reads a
conversation turn and the user's related memories and answers which facts to ADD, which memories to
UPDATE or DELETE, and which facts are already known (NONE).

:class:`FactExtractor` only talks to the model and checks its answer; MemoryService.extract decides what
to show it and applies the operations through the ordinary write paths.

- Transport: sessionkit_server.common.llm, ``openai.AsyncOpenAI`` with no retries of its own; tenacity retries
  connection errors, timeouts, 408, 409, 429 and 5xx with jittered exponential backoff, waiting what a
  429/503's ``Retry-After`` asks for instead. When the attempts run out: ``ServiceUnavailable``
  (reason ``EXTRACTION_LLM_UNAVAILABLE``) naming the base URL and the model. Other 4xx answers (a bad
  key, an unknown model): ``FailedPrecondition`` (reason ``EXTRACTION_LLM_REJECTED``).
- Output: a JSON object (``response_format={"type": "json_object"}``)
  ``{"operations": [{"type": "ADD"|"UPDATE"|"DELETE"|"NONE", "fact": "...", "memory_id": "..."}]}``.
  An answer that is not JSON, has the wrong shape or names a memory id it was not shown is sent back to
  the model with the problem, up to ``format_retries`` more times; then :class:`MalformedOutput`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sessionkit import reasons
from sessionkit_server.common.llm import LLMClient, Reasons

log = logging.getLogger("sessionkit.memory.extraction")

REASONS = Reasons(
    unavailable=reasons.EXTRACTION_LLM_UNAVAILABLE,
    rejected=reasons.EXTRACTION_LLM_REJECTED,
    label="the extraction LLM",
)

OPERATION_TYPES = ("ADD", "UPDATE", "DELETE", "NONE")
#: More operations than this in one answer is taken for a runaway answer (malformed).
MAX_OPERATIONS = 50

SYSTEM_PROMPT = """\
You maintain the long-term memory of an assistant about its user.

You get the user's existing memories that may be related (each with a memory_id) and one conversation
turn. Extract the durable facts the turn states about the user: preferences, personal details, plans,
relationships, decisions, corrections. Ignore small talk, questions and anything only true for the
moment. Then compare each fact with the existing memories and decide one operation per fact:

- ADD: a new fact that no existing memory holds. "fact" is the fact as one short standalone sentence.
- UPDATE: the fact refines or corrects an existing memory. "memory_id" is that memory's id and "fact"
  the memory's complete new text (not just the change).
- DELETE: the fact contradicts an existing memory, which must be forgotten. "memory_id" is its id;
  "fact" says why.
- NONE: the fact is already known. "memory_id" may name the memory that holds it.

Use only memory ids from the existing memories; never invent one. Write facts in the language the
user writes in. If the turn holds nothing worth keeping, answer {"operations": []}.

Answer with one JSON object and nothing else:
{"operations": [{"type": "ADD" | "UPDATE" | "DELETE" | "NONE", "fact": "...", "memory_id": "..."}]}"""

RETRY_PROMPT = (
    "Your answer could not be used: {problem}. Answer again with only the JSON object described in the "
    'instructions: {{"operations": [...]}}.'
)


@dataclass(frozen=True)
class Message:
    """One message of a conversation turn."""

    role: str
    content: str
    name: str = ""


@dataclass(frozen=True)
class ProposedOperation:
    """One operation the model decided on, checked for shape and memory ids (not applied yet)."""

    type: str  # one of OPERATION_TYPES
    fact: str
    memory_id: str = ""


class MalformedOutput(Exception):
    """The model's answers were unusable ``attempts`` times in a row; ``problems`` says why, each time."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        self.attempts = len(problems)


def parse_operations(
    content: str | None, known_ids: set[str], max_fact_bytes: int
) -> list[ProposedOperation]:
    """The operations in the model's answer; ``ValueError`` (what is wrong, for the model) otherwise."""
    if content is None or not content.strip():
        raise ValueError("the answer was empty")
    text = content.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, flags=re.DOTALL)
    if fenced:
        text = fenced.group(1)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"it is not valid JSON ({error.msg} at position {error.pos})") from None
    if not isinstance(data, dict) or not isinstance(data.get("operations"), list):
        raise ValueError('it is not a JSON object with an "operations" list')
    items: list[Any] = data["operations"]
    if len(items) > MAX_OPERATIONS:
        raise ValueError(f"it has {len(items)} operations; at most {MAX_OPERATIONS}")
    operations: list[ProposedOperation] = []
    for n, item in enumerate(items):
        where = f"operations[{n}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where} is not an object")
        kind = item.get("type")
        if not isinstance(kind, str) or kind.strip().upper() not in OPERATION_TYPES:
            raise ValueError(f"{where}.type is {kind!r}; it must be one of {', '.join(OPERATION_TYPES)}")
        kind = kind.strip().upper()
        fact = item.get("fact", "")
        if fact is None:
            fact = ""
        if not isinstance(fact, str):
            raise ValueError(f"{where}.fact must be a string")
        fact = fact.strip()
        if kind in ("ADD", "UPDATE") and not fact:
            raise ValueError(f"{where} ({kind}) has no fact")
        if "\x00" in fact or len(fact.encode()) > max_fact_bytes:
            raise ValueError(f"{where}.fact is longer than {max_fact_bytes} bytes or contains NUL")
        memory_id = item.get("memory_id", "")
        if memory_id is None:
            memory_id = ""
        if not isinstance(memory_id, str):
            raise ValueError(f"{where}.memory_id must be a string")
        memory_id = memory_id.strip()
        if kind in ("UPDATE", "DELETE") and not memory_id:
            raise ValueError(f"{where} ({kind}) has no memory_id")
        if kind == "ADD":
            memory_id = ""
        if memory_id and memory_id not in known_ids:
            raise ValueError(
                f"{where}.memory_id {memory_id!r} is not one of the existing memories you were shown"
            )
        operations.append(ProposedOperation(kind, fact, memory_id))
    return operations


def build_prompt(messages: Sequence[Message], memories: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """The chat messages sent to the model: the instructions, then the memories and the turn (as JSON,
    so nothing in them reads as an instruction's structure)."""
    existing = [{"memory_id": memory_id, "text": text} for memory_id, text in memories]
    turn = [{"role": m.role, "content": m.content, **({"name": m.name} if m.name else {})} for m in messages]
    body = (
        "Existing memories:\n"
        + json.dumps(existing, ensure_ascii=False, indent=1)
        + "\n\nConversation turn:\n"
        + json.dumps(turn, ensure_ascii=False, indent=1)
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": body}]


class FactExtractor:
    """Asks an OpenAI-compatible chat model which memory operations a conversation turn calls for."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_attempts: int = 4,
        initial_backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_retry_after: float = 60.0,
        format_retries: int = 2,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.model = model
        self.format_retries = format_retries
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
        self.base_url = self._llm.base_url

    async def _complete(self, prompt: list[dict[str, str]]) -> str | None:
        """One answer of the model, retried on transient failures (sessionkit_server.common.llm)."""
        chat: Any = prompt  # plain {"role", "content"} dicts: what the typed message params describe

        async def attempt() -> str | None:
            response = await self._llm.client.chat.completions.create(
                model=self.model, messages=chat, temperature=0, response_format={"type": "json_object"}
            )
            return response.choices[0].message.content if response.choices else None

        return await self._llm.call(self.model, attempt)

    async def extract(
        self, messages: Sequence[Message], memories: Sequence[tuple[str, str]], max_fact_bytes: int
    ) -> list[ProposedOperation]:
        """The operations for the turn ``messages`` given the related ``memories`` ((id, text) pairs).
        Raises MalformedOutput when every answer was unusable, ServiceUnavailable / FailedPrecondition
        when the model cannot be asked."""
        prompt = build_prompt(messages, memories)
        known = {memory_id for memory_id, _ in memories}
        problems: list[str] = []
        for _ in range(1 + self.format_retries):
            content = await self._complete(prompt)
            try:
                return parse_operations(content, known, max_fact_bytes)
            except ValueError as problem:
                problems.append(str(problem))
                log.warning(
                    "unusable extraction output from %s (attempt %d of %d): %s",
                    self.model,
                    len(problems),
                    1 + self.format_retries,
                    problem,
                    extra={"model": self.model, "attempt": len(problems), "problem": str(problem)},
                )
                prompt = [
                    *prompt,
                    {"role": "assistant", "content": content or ""},
                    {"role": "user", "content": RETRY_PROMPT.format(problem=problem)},
                ]
        raise MalformedOutput(problems)

    async def close(self) -> None:
        await self._llm.close()
