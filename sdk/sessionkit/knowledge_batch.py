"""Adding many files as one batch: ``add_knowledge(folder)`` or ``add_knowledge([path, ...])``.

The files are uploaded ``BATCH_CONCURRENCY`` at a time, each an ordinary single-file add (so each is
atomic, idempotent and retried like one), and the service embeds the chunks of concurrent adds together
(sessionkit_server.retrieval.coalesce): with several uploads in flight the model never waits for a
request's parsing, transaction or network round trip. One progress callback covers the whole batch."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from sessionkit.errors import FieldViolation, InvalidArgument

#: Uploads in flight at once during a batch add.
BATCH_CONCURRENCY = 8
ProgressCallback = Callable[[dict[str, Any]], None]
AddOne = Callable[[Path, str], Awaitable[dict[str, Any]]]


def is_batch(source: object) -> bool:
    """A list or tuple of paths, or an existing directory."""
    if isinstance(source, (list, tuple)):
        return True
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if isinstance(text, str) and len(text) < 4096 and "\n" not in text:
            try:
                return Path(text).is_dir()
            except OSError:
                return False
    return False


def batch_files(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[tuple[Path, str]]:
    """(path, source name) for each file of a batch. A folder: its files, recursively, in name order,
    hidden files and folders (".name") skipped, each named by its path relative to the folder (so
    a/README.md and b/README.md stay two sources). A list: each must be an existing file, named by its
    file name (two with the same file name are refused: the second would replace the first)."""
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        found = sorted(
            path
            for path in root.rglob("*")
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
        )
        if not found:
            raise InvalidArgument(
                f"the folder {str(root)!r} has no files to add",
                violations=[FieldViolation("source", "a folder with at least one (non-hidden) file")],
            )
        return [(path, path.relative_to(root).as_posix()) for path in found]
    files: list[tuple[Path, str]] = []
    seen: dict[str, Path] = {}
    for n, item in enumerate(source):
        if not isinstance(item, (str, os.PathLike)):
            raise InvalidArgument(
                f"source[{n}] must be a path, not {type(item).__name__}",
                violations=[FieldViolation(f"source[{n}]", "a file path")],
            )
        path = Path(item)
        if not path.is_file():
            raise InvalidArgument(
                f"source[{n}]: {str(path)!r} is not a file",
                violations=[FieldViolation(f"source[{n}]", "an existing file")],
            )
        if path.name in seen and seen[path.name].resolve() != path.resolve():
            raise InvalidArgument(
                f"source[{n}]: {str(path)!r} has the same file name as {str(seen[path.name])!r} (a source is "
                "named by its file name, so the second would replace the first): add them separately "
                "with name=",
                violations=[FieldViolation(f"source[{n}]", "a file name not already in the list")],
            )
        seen[path.name] = path
        files.append((path, path.name))
    if not files:
        raise InvalidArgument("no files to add", violations=[FieldViolation("source", "at least one path")])
    return files


async def add_batch(
    files: list[tuple[Path, str]],
    add_one: AddOne,
    on_progress: ProgressCallback | None = None,
    concurrency: int = BATCH_CONCURRENCY,
) -> dict[str, Any]:
    """Add ``files`` through ``add_one(path, name)``, ``concurrency`` at a time. Returns {"kind": "batch",
    "results": [each file's result, in the order given], "outcomes": {outcome: count}, "files",
    "chunks_added", "seconds"}. The first failure stops the batch (files not started are not added;
    those in flight finish) and is raised, with a note naming the file and how many were added."""
    started = time.perf_counter()
    sizes = [path.stat().st_size for path, _ in files]
    total_bytes = sum(sizes)
    results: list[dict[str, Any] | None] = [None] * len(files)
    state = {"next": 0, "done": 0, "bytes": 0, "chunks": 0}
    failure: list[tuple[int, BaseException]] = []

    def report(stage: str) -> None:
        if on_progress is not None:
            on_progress(
                {
                    "stage": stage,
                    "bytes_read": state["bytes"],
                    "bytes_total": total_bytes,
                    "chunks_created": state["chunks"],
                    "chunks_embedded": state["chunks"],
                    "chunks_total": 0,
                    "files_done": state["done"],
                    "files_total": len(files),
                }
            )

    async def worker() -> None:
        while not failure and state["next"] < len(files):
            n = state["next"]
            state["next"] += 1
            path, name = files[n]
            try:
                result = await add_one(path, name)
            except Exception as error:
                failure.append((n, error))
                return
            results[n] = result
            state["done"] += 1
            state["bytes"] += sizes[n]
            state["chunks"] += int(result.get("chunks_added", 0))
            report("storing" if state["done"] < len(files) else "done")

    report("receiving")
    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(files))))))
    if failure:
        n, error = min(failure, key=lambda item: item[0])
        error.add_note(
            f"while adding {str(files[n][0])!r} (file {n + 1} of {len(files)} in the batch; "
            f"{state['done']} added, the rest not)"
        )
        raise error
    done = [r for r in results if r is not None]
    outcomes: dict[str, int] = {}
    for result in done:
        outcomes[result["outcome"]] = outcomes.get(result["outcome"], 0) + 1
    return {
        "kind": "batch",
        "results": done,
        "outcomes": outcomes,
        "files": len(done),
        "chunks_added": sum(int(r.get("chunks_added", 0)) for r in done),
        "seconds": time.perf_counter() - started,
    }
