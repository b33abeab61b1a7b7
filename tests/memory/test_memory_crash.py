"""A crash between a memory's row commit and its vector write leaves neither an orphan vector nor a
missing one: the outbox written with the row is applied when the server starts again."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from sessionkit import RetryPolicy, ServiceUnavailable, Session
from sessionkit.v1 import common_pb2, memory_pb2, memory_pb2_grpc
from sessionkit_server.memory import tables as t
from sessionkit_server.memory.store import vector_collection
from sessionkit_server.retrieval.vector_index import ChromaIndex
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
    # The restarted server applies the outbox before serving, loading the model: slow on a busy machine.
    try:
        wait_serving(f"127.0.0.1:{port}", timeout=180)
    except TimeoutError:
        proc.kill()
        proc.wait(timeout=10)
        raise
    return proc


@pytest.mark.slow
def test_crash_between_row_and_vector_is_repaired_on_restart(tmp_path: Path) -> None:
    port = free_port()
    crashing = serve(tmp_path, port, SESSIONKIT_FAILPOINT="memory.after_row_commit")
    try:
        # A generous deadline: this first add loads the model in the child process (over 10 s while
        # other jobs load the machine); the death at the failpoint is what must end the call.
        s = Session(
            "s1", user_id="u1", address=f"127.0.0.1:{port}", timeout=60, retry=RetryPolicy(max_attempts=1)
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
            return await index.ids(vector_collection("default", "u1", t.LONG, "s1"))
        finally:
            await index.close()

    assert asyncio.run(vector_ids()) == {memories[0]["id"]}  # no orphan, none missing


@pytest.mark.slow
def test_crash_after_a_batch_commit_is_repaired_on_restart(tmp_path: Path) -> None:
    texts = ["Keeps bees on the roof", "Learning Portuguese on Tuesdays", "Allergic to penicillin"]
    request = memory_pb2.AddMemoriesRequest(
        session=common_pb2.SessionRef(app_name="default", user_id="u2", session_id="s1"),
        memories=[memory_pb2.NewMemory(text=text) for text in texts],
    )
    port = free_port()
    crashing = serve(tmp_path, port, SESSIONKIT_FAILPOINT="memory.after_row_commit")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = memory_pb2_grpc.MemoryServiceStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.RpcError):
                stub.AddMemories(request, timeout=60)
        assert crashing.wait(timeout=30) == 137  # died after the batch's commit, before its vectors
    finally:
        crashing.kill()
        crashing.wait()

    port = free_port()
    restarted = serve(tmp_path, port)
    try:
        s = Session("s1", user_id="u2", address=f"127.0.0.1:{port}", timeout=30)
        memories = {m["text"]: m["id"] for m in s.list_memories()}
        assert sorted(memories) == sorted(texts)
        assert s.search_memory("beekeeping", memory_type="long", limit=1)[0]["id"] == memories[texts[0]]
    finally:
        restarted.terminate()
        assert restarted.wait(timeout=30) == 0

    async def vector_ids() -> set[str]:
        index = ChromaIndex.embedded(tmp_path / "chroma")
        try:
            return await index.ids(vector_collection("default", "u2", t.LONG, "s1"))
        finally:
            await index.close()

    assert asyncio.run(vector_ids()) == set(memories.values())
