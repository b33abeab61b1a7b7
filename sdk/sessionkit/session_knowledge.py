"""A session's knowledge: sources (files, URLs, text) added, searched, listed and deleted; and
``session.knowledge``."""

from __future__ import annotations

import os
from typing import Any

from sessionkit.knowledge_client import ProgressCallback
from sessionkit.session_core import SessionCore


class KnowledgeMixin(SessionCore):
    # -- knowledge ------------------------------------------------------------------------------------

    @property
    def _chunker(self) -> dict[str, Any] | None:
        chunker = self.knowledge_config.get("chunker")
        return dict(chunker) if isinstance(chunker, dict) else None

    async def add_knowledge(
        self,
        source: str | os.PathLike[str],
        *,
        scope: str = "session",
        collection: str = "",
        name: str = "",
        content_type: str = "",
        metadata: dict[str, Any] | None = None,
        force: bool = False,
        on_progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        """Add a knowledge source: an existing file path (uploaded), an http(s):// URL (fetched by the
        service) or text. Re-adding a source of the same name replaces it ("updated") or changes nothing
        ("unchanged", same content). Returns {"kind": "file"|"url"|"text", "outcome", "source", ...}."""
        return await self._knowledge.add(
            self._ref,
            source,
            scope=scope,
            collection=collection,
            name=name,
            content_type=content_type,
            chunker=self._chunker,
            metadata=metadata,
            force=force,
            on_progress=on_progress,
        )

    async def search_knowledge(
        self,
        query: str,
        limit: int = 5,
        *,
        scopes: list[str] | None = None,
        collections: list[str] | None = None,
        source_names: list[str] | None = None,
        metadata_filter: dict[str, Any] | None = None,
        explain: bool = False,
    ) -> list[dict[str, Any]]:
        """Hybrid search over this session's and this user's knowledge (or the given scopes): chunks,
        best first, each with text, score, source {id, name, kind}, position and heading_path.
        ``explain=True`` adds each hit's "explanation": its dense and lexical ranks and scores (None
        for a ranking that did not find it) and the fused relevance (docs/KNOWLEDGE.md)."""
        return await self._knowledge.search(
            self._ref, query, limit, scopes, collections, source_names, metadata_filter, explain
        )

    async def list_knowledge(self, scopes: list[str] | None = None) -> list[dict[str, Any]]:
        """The knowledge sources of this session and user (or the given scopes)."""
        return await self._knowledge.list_all(self._ref, scopes)

    async def delete_knowledge(self, source: str, scope: str = "session") -> bool:
        """Delete one source, by id or by name in ``scope``; False when there is none."""
        return await self._knowledge.delete(self._ref, source, scope, allow_missing=True) is not None

    async def clear_knowledge(self, scope: str = "session", collection: str = "") -> int:
        """Delete every source of this session ("session"), this user ("user") or a collection;
        returns how many sources were deleted."""
        return await self._knowledge.clear(self._ref, scope, collection)


class SessionKnowledge:
    """``session.knowledge``: the session's knowledge methods on one object."""

    def __init__(self, session: KnowledgeMixin) -> None:
        self._session = session

    async def add(self, source: str | os.PathLike[str], **options: Any) -> dict[str, Any]:
        return await self._session.add_knowledge(source, **options)

    async def search(self, query: str, limit: int = 5, *, explain: bool = False) -> list[dict[str, Any]]:
        return await self._session.search_knowledge(query, limit, explain=explain)

    async def list(self) -> list[dict[str, Any]]:
        return await self._session.list_knowledge()

    async def delete(self, source: str) -> bool:
        return await self._session.delete_knowledge(source)

    async def clear(self, scope: str = "session") -> int:
        return await self._session.clear_knowledge(scope)
