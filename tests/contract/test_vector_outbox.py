"""The vector outbox's contract (sessionkit_server.common.vector_outbox) over both stores that keep
vectors (memory, knowledge), on SQLite and PostgreSQL: a write that changes a row queues its outbox
entry in the same transaction, a failed transaction leaves neither the row nor the entry, and a drain
(into an in-memory index) makes the index follow the rows, the row deciding."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any

import pytest

from sessionkit_server.common.db import Database
from sessionkit_server.common.idempotency import Idempotency
from sessionkit_server.common.vector_outbox import VectorOutbox
from sessionkit_server.knowledge.records import Replaced
from sessionkit_server.knowledge.store import KnowledgeStore
from sessionkit_server.memory.records import AddOutcome, MemoryRecord
from sessionkit_server.memory.store import MemoryStore
from sessionkit_server.retrieval.embeddings import Embedder
from sessionkit_server.retrieval.vector_index import Entry, Metadata, VectorIndex, Where
from tests.contract.test_knowledge_store import ALICE as ALICE_SCOPE
from tests.contract.test_knowledge_store import APP, chunks, source
from tests.contract.test_memory_store import ALICE, BOB, memory, now_us


class FakeEmbedder(Embedder):
    name = "fake"
    dimension = 2

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return [[float(len(text)), 1.0] for text in texts]


class FakeIndex(VectorIndex):
    """Collections in a dict: what the outbox wrote, to compare with the rows."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, tuple[list[float], Metadata]]] = defaultdict(dict)

    async def upsert(
        self, collection: str, ids: list[str], vectors: list[list[float]], metadatas: list[Metadata]
    ) -> None:
        for i, v, m in zip(ids, vectors, metadatas, strict=True):
            self.data[collection][i] = (v, m)

    async def delete(self, collection: str, ids: list[str]) -> None:
        for i in ids:
            self.data.get(collection, {}).pop(i, None)

    async def delete_where(self, collection: str, where: Where) -> None:
        raise NotImplementedError

    async def query(
        self, collection: str, vector: list[float], k: int, where: Where | None = None
    ) -> list[tuple[str, float]]:
        raise NotImplementedError

    async def ids(self, collection: str, where: Where | None = None) -> set[str]:
        return set(self.data.get(collection, {}))

    async def entries(self, collection: str, offset: int, limit: int) -> list[Entry]:
        items = sorted(self.data.get(collection, {}).items())[offset : offset + limit]
        return [Entry(i, v, m) for i, (v, m) in items]

    async def exists(self, collection: str) -> bool:
        return collection in self.data

    async def collections(self, prefix: str) -> list[str]:
        return sorted(c for c in self.data if c.startswith(prefix))

    async def drop(self, collection: str) -> None:
        self.data.pop(collection, None)

    async def close(self) -> None:
        pass

    def all_ids(self) -> set[str]:
        return {i for coll in self.data.values() for i in coll}


@pytest.fixture
async def memories(database: Database) -> MemoryStore:
    store = MemoryStore(database)
    await store.start()
    return store


@pytest.fixture
async def knowledge(database: Database) -> KnowledgeStore:
    store = KnowledgeStore(database)
    await store.start()
    return store


def explode(_: Any) -> bytes:
    raise RuntimeError("fails inside the write's transaction, after its rows were written")


# -- memory -------------------------------------------------------------------------------------------


async def test_each_memory_write_queues_its_entry_with_the_row(memories: MemoryStore) -> None:
    record = (await memories.add(memory(ALICE, "likes tea"), "x", 0)).memory
    assert [(e.row_id, e.app_name, e.collection) for e in await memories.pending()] == [
        (record.id, "app", record.vector_collection)
    ]
    new_text = "likes green tea"
    await memories.update(
        ALICE, record.id, now_us(), "x", text_hash=(new_text, hashlib.sha256(b"g").hexdigest())
    )
    await memories.update(ALICE, record.id, now_us(), "x", quality=0.9)  # the text is unchanged: no entry
    await memories.delete(ALICE, record.id, now_us(), "x")
    assert [e.row_id for e in await memories.pending()] == [record.id] * 3
    ids = [e.id for e in await memories.pending()]
    assert ids == sorted(ids)  # oldest first
    await memories.done(ids[:2])
    assert [e.id for e in await memories.pending()] == ids[2:]


async def test_a_failed_memory_write_leaves_neither_row_nor_entry(memories: MemoryStore) -> None:
    failing: Idempotency[AddOutcome] = Idempotency("k1", "AddMemory", explode)
    with pytest.raises(RuntimeError):
        await memories.add(memory(ALICE, "likes tea"), "x", 0, failing)
    assert await memories.list_page(ALICE, None, 10, 0, now_us()) == []
    assert await memories.pending() == []

    kept = (await memories.add(memory(ALICE, "kept"), "x", 0)).memory
    await memories.done([e.id for e in await memories.pending()])
    delete_key: Idempotency[MemoryRecord] = Idempotency("k2", "DeleteMemory", explode)
    with pytest.raises(RuntimeError):
        await memories.delete(ALICE, kept.id, now_us(), "x", idem=delete_key)
    assert await memories.get(ALICE, kept.id, now_us()) is not None
    assert await memories.pending() == []


async def test_a_drain_makes_the_index_follow_the_memory_rows(memories: MemoryStore) -> None:
    index = FakeIndex()
    outbox = VectorOutbox(memories, index, FakeEmbedder(), "memories", batch=2)
    a = (await memories.add(memory(ALICE, "likes tea"), "x", 0)).memory
    b = (await memories.add(memory(BOB, "likes coffee"), "x", 0)).memory
    c = (await memories.add(memory(ALICE, "gone soon"), "x", 0)).memory
    await memories.delete(ALICE, c.id, now_us(), "x")
    assert await outbox.drain() == 4
    assert await memories.pending() == []
    assert index.all_ids() == {a.id, b.id}
    assert set(index.data[a.vector_collection]) == {a.id}  # each owner in its own partition
    assert index.data[a.vector_collection][a.id][1] == {
        "user_id": "alice",
        "bucket": "long",
        "memory_type": 2,
    }
    assert await outbox.drain() == 0

    index.data.clear()
    assert await outbox.reindex(None) == (2, 2)
    assert index.all_ids() == {a.id, b.id}


# -- knowledge ----------------------------------------------------------------------------------------


async def test_each_knowledge_write_queues_its_entries_with_the_rows(knowledge: KnowledgeStore) -> None:
    put_chunks = chunks("one", "two")
    added = await knowledge.put(source(ALICE_SCOPE, "notes", "a"), put_chunks)
    pending = await knowledge.pending()
    assert sorted(e.row_id for e in pending) == sorted(c.id for c in put_chunks)
    await knowledge.done([e.id for e in pending])

    replacement = chunks("three")
    await knowledge.put(source(ALICE_SCOPE, "notes", "b"), replacement)  # old chunks out, new in
    assert sorted(e.row_id for e in await knowledge.pending()) == sorted(
        [c.id for c in put_chunks] + [replacement[0].id]
    )
    await knowledge.done([e.id for e in await knowledge.pending()])
    assert await knowledge.delete(APP, added.source.id, [ALICE_SCOPE]) == 1
    assert [e.row_id for e in await knowledge.pending()] == [replacement[0].id]


async def test_a_failed_knowledge_write_leaves_neither_rows_nor_entries(knowledge: KnowledgeStore) -> None:
    failing: Idempotency[Replaced] = Idempotency("k1", "AddSource", explode)
    with pytest.raises(RuntimeError):
        await knowledge.put(source(ALICE_SCOPE, "notes", "a"), chunks("one"), idem=failing, user_id="alice")
    assert await knowledge.by_name(APP, ALICE_SCOPE, "notes") is None
    assert await knowledge.pending() == []

    kept = await knowledge.put(source(ALICE_SCOPE, "kept", "a"), chunks("one"))
    await knowledge.done([e.id for e in await knowledge.pending()])
    clear_key: Idempotency[tuple[int, int]] = Idempotency("k2", "ClearKnowledge", explode)
    with pytest.raises(RuntimeError):
        await knowledge.clear(APP, ALICE_SCOPE, clear_key, "alice")
    assert await knowledge.by_id(APP, kept.source.id, [ALICE_SCOPE]) is not None
    assert await knowledge.pending() == []


async def test_a_drain_makes_the_index_follow_the_chunk_rows(knowledge: KnowledgeStore) -> None:
    index = FakeIndex()
    outbox = VectorOutbox(knowledge, index, FakeEmbedder(), "knowledge", batch=2)
    first = chunks("one", "two")
    await knowledge.put(source(ALICE_SCOPE, "notes", "a"), first)
    second = chunks("three")
    await knowledge.put(source(ALICE_SCOPE, "notes", "b"), second)
    await outbox.drain()
    assert await knowledge.pending() == []
    assert index.all_ids() == {second[0].id}  # the replaced version's chunks were deleted again
    index.data.clear()
    assert await outbox.reindex(APP) == (1, 1)
    assert index.all_ids() == {second[0].id}


# -- write-behind: what a reader waits for ------------------------------------------------------------


async def test_searchable_waits_for_the_vectors_queued_before_it_not_their_bookkeeping() -> None:
    """A search (or a near-duplicate check) waits until the vectors of the writes already answered
    are in the index, not for their outbox entries' deletion nor for vectors queued after it."""
    import asyncio

    from sessionkit_server.common.vector_outbox import IndexRow

    index = FakeIndex()
    bookkeeping = asyncio.Event()
    deleted: list[str] = []

    async def done_rows(ids: list[str]) -> None:
        await bookkeeping.wait()  # a slow commit
        deleted.extend(ids)

    class NoRows:  # the outbox source: never read by write_behind
        pass

    outbox = VectorOutbox(NoRows(), index, FakeEmbedder(), "memories", done_rows=done_rows)  # type: ignore[arg-type]

    def row(name: str) -> IndexRow:
        return IndexRow(name, name, "c", {}, name)

    outbox.write_behind([row("a")], [[1.0, 0.0]])
    await asyncio.wait_for(outbox.searchable(), 5)
    assert index.all_ids() == {"a"} and deleted == []  # in the index; its entry not deleted yet
    outbox.write_behind([row("b")], [[0.0, 1.0]])  # queued while the first batch's commit waits
    waiting = asyncio.ensure_future(outbox.searchable())
    await asyncio.sleep(0.05)
    assert not waiting.done()  # "b" is not in the index yet (the writer is still on "a"'s commit)
    bookkeeping.set()
    await asyncio.wait_for(waiting, 5)
    assert index.all_ids() == {"a", "b"}
    await asyncio.wait_for(outbox.settle(), 5)  # settle: the entries deleted too
    assert deleted == ["a", "b"]
    await asyncio.wait_for(outbox.searchable(), 5)  # nothing queued: returns at once
