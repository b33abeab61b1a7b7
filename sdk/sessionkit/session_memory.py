"""A session's memory: short-term (this session) and long-term (this user) memories, batch writes,
search and prompt context, LLM extraction (provider "mem0"), history; and ``session.memory``."""

from __future__ import annotations

from typing import Any

from sessionkit.errors import InvalidArgument
from sessionkit.session_core import SessionCore


class MemoryMixin(SessionCore):
    # -- memory ---------------------------------------------------------------------------------------

    def _check_memory(self) -> bool:
        return self.memory_enabled

    async def add_memory(
        self, text: str, memory_type: str = "long", **metadata: Any
    ) -> dict[str, Any] | None:
        """Store ``text`` in short-term (this session) or long-term (this user) memory, tagged with
        ``metadata``. ``quality_score=`` may be passed among the keyword arguments. The same text twice
        returns the existing memory (``deduplicated``); a near-duplicate is merged into it (``merged``).
        Returns the memory as a dict (None when memory_config's provider is "none").

        With provider "mem0" the text goes through LLM fact extraction instead (as the user's message
        of a turn, see ``extract_memories``): the result is ``{"operations": [...], "model": ...,
        "extraction_failed": ...}``; the memories it adds get ``quality_score`` and ``metadata``."""
        quality = metadata.pop("quality_score", None)
        if not self._check_memory():
            return None
        if self.memory_provider == "mem0":
            if not isinstance(text, str):
                raise InvalidArgument(f"memory text must be a str, not {type(text).__name__}")
            return await self._memory.extract(
                self._ref, [{"role": "user", "content": text}], memory_type, metadata, quality=quality
            )
        return await self._memory.add(self._ref, text, memory_type, quality, metadata)

    async def extract_memories(
        self,
        messages: list[dict[str, str]],
        memory_type: str = "long",
        *,
        metadata: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any] | None:
        """LLM fact extraction from one conversation turn (``[{"role": "user", "content": ...},
        {"role": "assistant", "content": ...}]``): the server's LLM compares the facts it finds with this
        user's related memories and adds, updates or deletes memories. Returns ``{"operations":
        [{"type": "ADD"|"UPDATE"|"DELETE"|"NONE", "fact", "old_text", "memory"}], "model": ...,
        "extraction_failed": bool}`` (True when the LLM's answers were unusable and the user's messages
        were stored as they are). ``dry_run=True`` decides without applying. None when memory is off
        (provider "none"). Works whatever the provider; needs an LLM configured on the server
        (``FailedPrecondition``, reason EXTRACTION_UNAVAILABLE, otherwise)."""
        if not self._check_memory():
            return None
        return await self._memory.extract(self._ref, messages, memory_type, metadata, dry_run)

    async def store_short_memory(self, content: str, **metadata: Any) -> dict[str, Any] | None:
        """Remember ``content`` for this session (bounded: the oldest are dropped beyond the window)."""
        return await self.add_memory(content, "short", **metadata)

    async def store_long_memory(
        self, content: str, quality_score: float = 0.7, **metadata: Any
    ) -> dict[str, Any] | None:
        """Remember ``content`` for this user, across all their sessions."""
        return await self.add_memory(content, "long", quality_score=quality_score, **metadata)

    async def search_memory(
        self,
        query: str,
        memory_type: str = "all",
        limit: int = 5,
        *,
        min_quality: float | None = None,
        metadata_filter: dict[str, Any] | None = None,
        explain: bool = False,
    ) -> list[dict[str, Any]]:
        """Memories relevant to ``query`` ("all" = this session's short-term and this user's long-term),
        best first, each a dict with text, id, memory_type, score (and its components), metadata.
        ``explain=True`` adds each hit's "explanation": its dense and lexical ranks and scores (None
        for a ranking that did not find it), the fused relevance, the quality and recency terms, their
        weights and the final score (docs/MEMORY.md)."""
        if not self._check_memory():
            return []
        return await self._memory.search(
            self._ref, query, memory_type, limit, min_quality, metadata_filter, explain
        )

    async def get_memory_context(self, query: str, max_items: int = 3) -> str:
        """The memories relevant to ``query`` as one text block for a prompt ("" when there are none)."""
        if not self._check_memory():
            return ""
        return await self._memory.context(self._ref, query, max_items)

    async def clear_memory(
        self, memory_type: str = "all", metadata_filter: dict[str, Any] | None = None
    ) -> int:
        """Delete this session's short-term memories ("short"), this user's long-term ones ("long"), or
        both ("all"); with ``metadata_filter``, only those whose metadata has these exact values.
        Returns how many were deleted."""
        if not self._check_memory():
            return 0
        return await self._memory.clear(self._ref, memory_type, metadata_filter=metadata_filter)

    async def add_memories(
        self, memories: list[Any], memory_type: str = "long"
    ) -> list[dict[str, Any]] | None:
        """Store many memories in one call (one transaction, one batched embedding): texts, or dicts
        {"text", "memory_type", "quality_score", "metadata"}. One memory dict per item, in order, with
        "deduplicated" / "merged". None when memory_config's provider is "none"."""
        if not self._check_memory():
            return None
        if self.memory_provider == "mem0":
            # Extraction is per turn: each text goes through it as one user message.
            out: list[dict[str, Any]] = []
            for m in memories:
                if isinstance(m, str):
                    added = await self.add_memory(m, memory_type)
                else:  # each item's own type, quality and metadata, as add_many sends them
                    meta = dict(m.get("metadata") or {})
                    if m.get("quality_score") is not None:
                        meta["quality_score"] = m["quality_score"]
                    added = await self.add_memory(m["text"], m.get("memory_type") or memory_type, **meta)
                out.append(added or {})
            return out
        return await self._memory.add_many(self._ref, memories, memory_type)

    async def get_memory(self, memory_id: str) -> dict[str, Any]:
        return await self._memory.get(self._ref, memory_id)

    async def list_memories(
        self, memory_type: str = "all", metadata_filter: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        if not self._check_memory():
            return []
        return await self._memory.list_all(self._ref, memory_type, metadata_filter)

    async def update_memory(
        self,
        memory_id: str,
        text: str | None = None,
        *,
        metadata: dict[str, Any] | None = None,
        quality_score: float | None = None,
    ) -> dict[str, Any]:
        return await self._memory.update(self._ref, memory_id, text, metadata, quality_score)

    async def delete_memory(self, memory_id: str) -> bool:
        return await self._memory.delete(self._ref, memory_id)

    async def memory_history(self, memory_id: str) -> list[dict[str, Any]]:
        """Every change of one memory (ADD, UPDATE, MERGE, DELETE), oldest first."""
        return await self._memory.history(self._ref, memory_id)


class SessionMemory:
    """``session.memory``: the session's memory methods on one object."""

    def __init__(self, session: MemoryMixin) -> None:
        self._session = session

    async def add(self, text: str, memory_type: str = "long", **metadata: Any) -> dict[str, Any] | None:
        return await self._session.add_memory(text, memory_type, **metadata)

    async def search(
        self, query: str, memory_type: str = "all", limit: int = 5, *, explain: bool = False
    ) -> list[dict[str, Any]]:
        return await self._session.search_memory(query, memory_type, limit, explain=explain)

    async def extract(
        self, messages: list[dict[str, str]], memory_type: str = "long"
    ) -> dict[str, Any] | None:
        return await self._session.extract_memories(messages, memory_type)

    async def context(self, query: str, max_items: int = 3) -> str:
        return await self._session.get_memory_context(query, max_items)

    async def clear(self, memory_type: str = "all") -> int:
        return await self._session.clear_memory(memory_type)
