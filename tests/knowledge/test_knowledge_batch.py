"""Adding a folder or a list of files as one batch, through the sync and the async Session: every file
becomes its own source (named by its path in the folder), one progress callback covers the batch, a
second add is all "unchanged", and a bad file stops the batch with an error naming it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from sessionkit import AsyncSession
from sessionkit.errors import InvalidArgument
from tests.knowledge.support import session
from tests.servers import ServerThread


def _folder(root: Path) -> Path:
    (root / "guides").mkdir(parents=True)
    (root / "a.md").write_text("# Owls\n\nBarn owls hunt voles at night by sound alone.\n")
    (root / "b.txt").write_text("Swifts sleep while flying over the ocean.")
    (root / "guides" / "a.md").write_text("# Ferries\n\nThe night ferry to the island leaves at ten.\n")
    (root / ".hidden").write_text("not added")
    return root


def test_a_folder_is_added_as_one_batch_with_one_progress(
    knowledge_server: ServerThread, tmp_path: Path
) -> None:
    s = session(knowledge_server)
    seen: list[dict[str, Any]] = []
    result = s.add_knowledge(_folder(tmp_path / "docs"), on_progress=seen.append)
    assert result["kind"] == "batch" and result["files"] == 3
    assert result["outcomes"] == {"created": 3}
    names = sorted(r["source"]["name"] for r in result["results"])
    assert names == ["a.md", "b.txt", "guides/a.md"]  # two a.md stay two sources
    assert sorted(k["name"] for k in s.list_knowledge()) == names
    assert seen[-1]["files_done"] == seen[-1]["files_total"] == 3
    assert seen[-1]["bytes_read"] == seen[-1]["bytes_total"] > 0
    assert [p["files_done"] for p in seen] == sorted(p["files_done"] for p in seen)
    hits = s.search_knowledge("when does the boat to the island leave", limit=1)
    assert hits and hits[0]["source"]["name"] == "guides/a.md"
    again = s.add_knowledge(str(tmp_path / "docs"))
    assert again["outcomes"] == {"unchanged": 3} and again["chunks_added"] == 0


def test_a_list_of_files_is_a_batch_and_a_bad_file_stops_it(
    knowledge_server: ServerThread, tmp_path: Path
) -> None:
    docs = _folder(tmp_path / "docs")
    s = AsyncSession(f"s-{uuid.uuid4().hex[:8]}", user_id="u-batch", address=knowledge_server.address)

    async def run() -> None:
        result = await s.add_knowledge([docs / "a.md", str(docs / "b.txt")], scope="user")
        assert result["files"] == 2 and [r["source"]["name"] for r in result["results"]] == ["a.md", "b.txt"]
        assert all(r["source"]["scope"] == "user" for r in result["results"])
        with pytest.raises(InvalidArgument, match="same file name"):
            await s.add_knowledge([docs / "a.md", docs / "guides" / "a.md"])
        with pytest.raises(InvalidArgument, match="is not a file"):
            await s.add_knowledge([docs / "a.md", docs / "missing.md"])
        with pytest.raises(InvalidArgument, match="name= applies to one source"):
            await s.add_knowledge(docs, name="all")
        (docs / "empty.txt").write_bytes(b"")
        with pytest.raises(InvalidArgument) as refused:
            await s.add_knowledge(docs)
        assert any("empty.txt" in note for note in getattr(refused.value, "__notes__", []))
        await s.close()

    asyncio.run(run())
