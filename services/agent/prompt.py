"""The prompt of a turn: system prompt (persona + instructions), memory and knowledge context, recent
history and the user's message, fitted into a token budget.

Tokens are counted with a real tokenizer (sessionkit_server.retrieval.tokens, the embedding model's WordPiece
tokenizer, loaded offline), not characters. It is not the chat model's own tokenizer, so the budget
keeps a margin (``TOKEN_MARGIN``); what matters is that a long history or a large document cannot
push the prompt past the model's context: the oldest history goes first, then the lowest-ranked
context items; the system prompt and the message are always kept."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from sessionkit_server.retrieval.tokens import count_tokens

#: Head-room for the difference between our tokenizer and the model's, and per-message overhead.
TOKEN_MARGIN = 1.15
PER_MESSAGE = 4
#: Token counts of recent texts: a turn counts its whole history window again (20 messages, 19 of them
#: counted by the previous turn) and the same memories and chunks recur; the counts were ~5 ms of a
#: turn's event-loop time, between the searches and the LLM call. Texts up to COUNTED_CHARS only, so
#: the cache holds at most COUNTED_TEXTS * COUNTED_CHARS characters.
COUNTED_TEXTS = 1024
COUNTED_CHARS = 8192
_counted: OrderedDict[str, int] = OrderedDict()


@dataclass
class Persona:
    name: str
    role: str
    goal: str = ""
    backstory: str = ""
    instructions: str = ""


@dataclass
class ContextItem:
    """A memory or a knowledge chunk offered to the prompt."""

    id: str
    text: str
    source: str = ""  # knowledge only: the source's name


@dataclass
class Prompt:
    messages: list[dict[str, Any]]
    memory_ids: list[str] = field(default_factory=list)
    chunk_ids: list[str] = field(default_factory=list)
    tokens: int = 0
    history_used: int = 0


def tokens(text: str) -> int:
    return int(_count(text) * TOKEN_MARGIN) + PER_MESSAGE


def _count(text: str) -> int:
    if len(text) > COUNTED_CHARS:
        return count_tokens(text)
    found = _counted.get(text)
    if found is not None:
        _counted.move_to_end(text)
        return found
    found = _counted[text] = count_tokens(text)
    if len(_counted) > COUNTED_TEXTS:
        _counted.popitem(last=False)
    return found


def system_prompt(persona: Persona, tool_names: list[str]) -> str:
    lines = [f"You are {persona.name}, {persona.role or 'Assistant'}."]
    if persona.goal:
        lines.append(f"Your goal: {persona.goal}")
    if persona.backstory:
        lines.append(persona.backstory)
    if persona.instructions:
        lines.append(persona.instructions)
    if tool_names:
        lines.append(f"You can call these tools when they help: {', '.join(tool_names)}.")
    return "\n".join(lines)


def build(
    persona: Persona,
    message: str,
    history: list[dict[str, str]],
    memories: list[ContextItem],
    chunks: list[ContextItem],
    budget: int,
    tool_names: list[str] | None = None,
    extra_context: str = "",
) -> Prompt:
    """Messages for the model within ``budget`` tokens (history oldest first; context best first)."""
    system = system_prompt(persona, tool_names or [])
    if extra_context:
        system += "\n\n" + extra_context
    used = tokens(system) + tokens(message)
    # Context before history: what the user's question is about beats what was said long ago; but
    # context gets at most half of what is left, so a conversation keeps its thread.
    context_budget = max(0, budget - used) // 2
    kept_memories: list[ContextItem] = []
    kept_chunks: list[ContextItem] = []
    context_used = 0
    for item, kept in _interleave(memories, kept_memories, chunks, kept_chunks):
        cost = tokens(item.text) + 4
        if context_used + cost > context_budget:
            continue
        kept.append(item)
        context_used += cost
    parts: list[str] = []
    if kept_memories:
        parts.append("What you remember about the user and this conversation:")
        parts.extend(f"- {m.text}" for m in kept_memories)
    if kept_chunks:
        if parts:
            parts.append("")
        parts.append("Relevant passages from the knowledge base:")
        parts.extend(f"- [{c.source}] {c.text}" if c.source else f"- {c.text}" for c in kept_chunks)
    if parts:
        system += "\n\n" + "\n".join(parts)
        used += context_used
    kept_history: list[dict[str, str]] = []
    for entry in reversed(history):
        cost = tokens(entry["content"])
        if used + cost > budget:
            break
        kept_history.append(entry)
        used += cost
    kept_history.reverse()
    # A reply without its question reads as if the assistant spoke first: start at a user message.
    while kept_history and kept_history[0]["role"] != "user":
        kept_history.pop(0)
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    messages.extend(kept_history)
    messages.append({"role": "user", "content": message})
    return Prompt(
        messages,
        [m.id for m in kept_memories],
        [c.id for c in kept_chunks],
        used,
        len(kept_history),
    )


def _interleave(
    a: list[ContextItem], a_kept: list[ContextItem], b: list[ContextItem], b_kept: list[ContextItem]
) -> list[tuple[ContextItem, list[ContextItem]]]:
    """Best memory, best chunk, second memory, ...: neither kind starves the other."""
    out: list[tuple[ContextItem, list[ContextItem]]] = []
    for n in range(max(len(a), len(b))):
        if n < len(a):
            out.append((a[n], a_kept))
        if n < len(b):
            out.append((b[n], b_kept))
    return out
