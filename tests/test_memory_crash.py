"""A crash between a memory's row commit and its vector write leaves neither an orphan vector nor a
missing one: the outbox written with the row is applied when the server starts again."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from services.memory.service import collection
from services.retrieval.vector_index import ChromaIndex
from sessionkit import RetryPolicy, ServiceUnavailable, Session
from tests.conftest import free_port
from tests.servers import child_env, wait_serving


def serve(data_dir: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sessionkit.cli",
            "serve",
            "--port",
            str(port),
            "--service",
            "state",
            "--service",
            "memory",
            "--data-dir",
            str(data_dir),
        ],
        env=child_env(SESSIONKIT_LOG_LEVEL="WARNING", **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_serving(f"127.0.0.1:{port}", timeout=60)
    return proc


@pytest.mark.slow
def test_crash_between_row_and_vector_is_repaired_on_restart(tmp_path: Path) -> None:
    port = free_port()
    crashing = serve(tmp_path, port, SESSIONKIT_FAILPOINT="memory.after_row_commit")
    try:
        s = Session(
            "s1", user_id="u1", address=f"127.0.0.1:{port}", timeout=10, retry=RetryPolicy(max_attempts=1)
        )
        with pytest.raises(ServiceUnavailable):
            s.store_long_memory("Penguins huddle together to survive Antarctic winters")
        assert crashing.wait(timeout=30) == 137  # died at the failpoint, after the row's commit
    finally:
        crashing.kill()
        crashing.wait()

    port = free_port()
    restarted = serve(tmp_path, port)
    try:
        s = Session("s1", user_id="u1", address=f"127.0.0.1:{port}", timeout=30)
        memories = s.list_memories()
        assert [m["text"] for m in memories] == ["Penguins huddle together to survive Antarctic winters"]
        hits = s.search_memory("how do birds survive the cold", memory_type="long")
        assert hits and hits[0]["id"] == memories[0]["id"] and hits[0]["scores"]["semantic"] > 0.3
    finally:
        restarted.terminate()
        assert restarted.wait(timeout=30) == 0

    async def vector_ids() -> set[str]:
        index = ChromaIndex.embedded(tmp_path / "chroma")
        try:
            return await index.ids(collection("default"))
        finally:
            await index.close()

    assert asyncio.run(vector_ids()) == {memories[0]["id"]}  # no orphan, none missing
