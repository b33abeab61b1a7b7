"""A session's knowledge: sources (files, URLs, text) added, searched, listed and deleted; and
``session.knowledge``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sessionkit.errors import FieldViolation, InvalidArgument
from sessionkit.knowledge_batch import add_batch, batch_files, is_batch
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
        source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
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
        ("unchanged", same content). Returns {"kind": "file"|"url"|"text", "outcome", "source", ...}.

        A folder (its files, recursively, each named by its path in the folder) or a list of file paths
        is added as one batch, several uploads at a time, with one ``on_progress`` for the whole batch
        (adding "files_done" and "files_total"). Returns {"kind": "batch", "results": [each file's
        result], "outcomes": {"created": n, ...}, "files", "chunks_added", "seconds"}; the first file
        that fails stops the batch and its error is raised (a note names the file)."""
        if is_batch(source):
            if name:
                raise InvalidArgument(
                    "name= applies to one source, not to a folder or a list of files",
                    violations=[FieldViolation("name", "leave empty for a batch (files keep their names)")],
                )
            files = await asyncio.to_thread(batch_files, source)

            async def add_one(path: Path, file_name: str) -> dict[str, Any]:
                return await self._knowledge.add(
                    self._ref,
                    path,
                    scope=scope,
                    collection=collection,
                    name=file_name,
                    content_type=content_type,
                    chunker=self._chunker,
                    metadata=metadata,
                    force=force,
                )

            return await add_batch(files, add_one, on_progress)
        if not isinstance(source, (str, os.PathLike)):  # is_batch took every list and tuple
            raise InvalidArgument(
                f"a knowledge source must be a str, a path or a list of paths, not {type(source).__name__}"
            )
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

    async def add(
        self, source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], **options: Any
    ) -> dict[str, Any]:
        return await self._session.add_knowledge(source, **options)

    async def search(self, query: str, limit: int = 5, *, explain: bool = False) -> list[dict[str, Any]]:
        return await self._session.search_knowledge(query, limit, explain=explain)

    async def list(self) -> list[dict[str, Any]]:
        return await self._session.list_knowledge()

    async def delete(self, source: str) -> bool:
        return await self._session.delete_knowledge(source)

    async def clear(self, scope: str = "session") -> int:
        return await self._session.clear_knowledge(scope)
