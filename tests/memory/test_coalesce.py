"""The coalescer of concurrent calls (sessionkit_server.retrieval.coalesce.Coalescer) and its use by
memory adds: concurrent adds' near-duplicate checks share one vector query per partition, their
same-content reads one transaction, and every add still gets its own answer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sessionkit_server.common.db import Database
from sessionkit_server.common.identity import Owner
from sessionkit_server.memory import tables as t
from sessionkit_server.memory.service import MemoryService, content_hash
from sessionkit_server.memory.store import MemoryStore
from sessionkit_server.retrieval.coalesce import Coalescer
from sessionkit_server.retrieval.embeddings import LocalEmbedder
from sessionkit_server.retrieval.vector_index import ChromaIndex, Where
from tests.memory.test_memory_batch import record


async def test_concurrent_calls_share_batches_in_order_and_a_failure_reaches_its_batch() -> None:
    batches: list[list[int]] = []

    async def double(items: list[int]) -> list[int]:
        batches.append(items)
        await asyncio.sleep(0.01)
        if -1 in items:
            raise ValueError("refused")
        return [2 * x for x in items]

    run = Coalescer(double, max_batch=4)
    assert await run(5) == 10 and batches == [[5]]  # a lone call goes at once
    batches.clear()
    assert await asyncio.gather(*(run(n) for n in range(10))) == [2 * n for n in range(10)]
    assert [len(b) for b in batches] == [4, 4, 2]  # at most max_batch, arrival order kept
    batches.clear()
    results = await asyncio.gather(run(1), run(-1), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results) and batches == [[1, -1]]
    assert await run(3) == 6  # the coalescer keeps working after a failed batch


class CountingIndex(ChromaIndex):
    """The embedded Chroma index, counting the near-duplicate queries."""

    single: list[str]
    many: list[tuple[str, int]]

    async def query(
        self, collection: str, vector: list[float], k: int, where: Where | None = None
    ) -> list[tuple[str, float]]:
        self.single.append(collection)
        return await super().query(collection, vector, k, where)

    async def query_many(
        self, collection: str, vectors: list[list[float]], k: int, where: Where | None = None
    ) -> list[list[tuple[str, float]]]:
        self.many.append((collection, len(vectors)))
        return await super().query_many(collection, vectors, k, where)


async def test_concurrent_adds_check_near_duplicates_together_each_in_its_own_partition(
    tmp_path: Path,
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    store = MemoryStore(db)
    index = ChromaIndex.embedded(tmp_path / "chroma")
    index.__class__ = CountingIndex
    assert isinstance(index, CountingIndex)
    index.single, index.many = [], []
    service = MemoryService(store, index, LocalEmbedder())
    await service.start()
    try:
        alice, bob = Owner("app", "alice", "s1"), Owner("app", "bob", "s1")
        stored = await service.add(alice, "The user's favourite colour is blue")
        index.many.clear()
        texts = [f"Alice's note number {n}: she visited town {n * 7} by train" for n in range(12)]
        results = await asyncio.gather(
            service.add(alice, "The user's favorite color is blue"),  # a near duplicate: merged
            service.add(bob, "The user's favorite color is blue"),  # bob's own: not alice's memory
            *(service.add(alice, text) for text in texts),
            service.add(alice, "The user's favourite colour is blue"),  # an exact duplicate
        )
        assert results[0].merged and results[0].memory.id == stored.memory.id
        assert not results[1].merged and results[1].memory.user_id == "bob"
        assert [r.memory.text for r in results[2:-1]] == texts
        assert not any(r.merged or r.deduplicated for r in results[2:-1])
        assert results[-1].deduplicated and results[-1].memory.id == stored.memory.id
        assert index.single == []  # every check went through query_many
        checks = sum(n for _, n in index.many)
        assert checks == 14 and len(index.many) < checks  # shared queries, not one each
        for coll, _ in index.many:  # bob's vector only ever looked up in bob's partition
            assert ("bob" in coll) != ("alice" in coll)
        # Each add is found by meaning right after its answer.
        hits = await service.search(alice, "which town did she visit by train, number 5", t.LONG, 3)
        assert texts[5] in [h.memory.text for h in hits]
    finally:
        await service.close()
        await db.close()


@pytest.mark.parametrize("count", [1, 20])
async def test_same_content_reads_of_concurrent_adds_answer_each_its_own(tmp_path: Path, count: int) -> None:
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    store = MemoryStore(db)
    await store.start()
    try:
        owners = [Owner("app", f"user{n % 3}", "s1") for n in range(count)]
        stored = {}
        for n in range(0, count, 2):  # every other text stored, by its own owner
            r = record("app", owners[n].user_id, f"text {n}")
            await store.add(r, "test", 100)
            stored[n] = r.id
        keys = [(o, t.LONG, content_hash(f"text {n}")) for n, o in enumerate(owners)]
        keys.append((Owner("app", "mallory", "s1"), t.LONG, content_hash("text 0")))  # not hers
        keys.append((owners[0], t.SHORT, content_hash("text 0")))  # another memory type
        found = await store.by_hash_many(keys, record("app", "x", "x").create_us)
        assert [None if f is None else f.id for f in found] == [stored.get(n) for n in range(count)] + [
            None,
            None,
        ]
    finally:
        await db.close()
