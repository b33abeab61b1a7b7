"""Bulk ingestion (AddMemories through the SDK's MemoryClient), concurrent single adds sharing one model
call, and the vector partitions: a user's search reads only that user's vectors and lexical matches,
a data directory from before partitions is migrated at start-up, and reindex rebuilds every partition.
Real servers, real SQLite / PostgreSQL, real Chroma and the real embedding model."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import grpc
import pytest

from sessionkit import AsyncSession, InvalidArgument
from sessionkit.memory_client import MemoryClient
from sessionkit.v1 import common_pb2, memory_pb2, memory_pb2_grpc
from sessionkit_server.common.db import Database
from sessionkit_server.memory import tables as t
from sessionkit_server.memory.batching import EmbeddingBatcher
from sessionkit_server.memory.service import MemoryService, content_hash
from sessionkit_server.memory.store import MemoryRecord, MemoryStore, Owner, app_collection, vector_collection
from sessionkit_server.retrieval.embeddings import LocalEmbedder
from sessionkit_server.retrieval.vector_index import ChromaIndex
from sessionkit_server.retrieval.words import details, fts5_match, lexical_terms
from tests.chroma_server import chroma_server  # noqa: F401 - fixture
from tests.memory.test_memory import memory_server  # noqa: F401 - fixture (SQLite, PostgreSQL, Chroma server)
from tests.servers import ServerThread


def client_of(session: AsyncSession) -> MemoryClient:
    """The SDK's memory client over the session's connection (what Session.add_memories calls)."""
    return MemoryClient(session._transport)


async def test_add_memories_stores_a_batch_in_order_with_dedup_and_merging(
    memory_server: ServerThread,  # noqa: F811
) -> None:
    s = AsyncSession("s1", user_id="alice", address=memory_server.address)
    memory = client_of(s)
    stored = await s.store_long_memory("The user's favourite colour is blue", quality_score=0.6)
    assert stored is not None
    results = await memory.add_many(
        s._ref,
        [
            "Lives in Porto",
            {"text": "The user's favorite color is blue", "quality_score": 0.9, "metadata": {"src": "b"}},
            "  lives in   PORTO ",  # an exact duplicate of the first item
            {"text": "We are looking at invoice 7731", "memory_type": "short"},
            "My dentist appointment is on Tuesday at 3 pm.",
            "My dentist appointment is on Friday at 10 am.",  # a near-duplicate with other details
            stored["text"],  # an exact duplicate of a stored memory
        ],
    )
    assert [r["text"] for r in results] == [
        "Lives in Porto",
        "The user's favourite colour is blue",
        "Lives in Porto",
        "We are looking at invoice 7731",
        "My dentist appointment is on Tuesday at 3 pm.",
        "My dentist appointment is on Friday at 10 am.",
        "The user's favourite colour is blue",
    ]
    assert [(r["deduplicated"], r["merged"]) for r in results] == [
        (False, False),
        (False, True),
        (True, False),
        (False, False),
        (False, False),
        (False, False),
        (True, False),
    ]
    assert results[0]["id"] == results[2]["id"] and results[1]["id"] == results[6]["id"] == stored["id"]
    assert results[1]["quality_score"] == 0.9 and results[1]["metadata"] == {"src": "b"}
    assert results[3]["memory_type"] == "short"
    assert len(await s.list_memories()) == 5
    assert [c["operation"] for c in await s.memory_history(stored["id"])] == ["ADD", "MERGE"]
    # Every stored memory is searchable at once (the vectors were written before the call returned).
    hits = await s.search_memory("When do I see the dentist?", memory_type="long", limit=2)
    assert {h["text"] for h in hits} == {results[4]["text"], results[5]["text"]}
    assert (await s.search_memory("which invoice", memory_type="short"))[0]["text"] == results[3]["text"]
    await s.close()


async def test_a_near_duplicate_inside_the_batch_is_folded_into_the_earlier_one(
    memory_server: ServerThread,  # noqa: F811
) -> None:
    s = AsyncSession("s1", user_id="bob", address=memory_server.address)
    results = await client_of(s).add_many(
        s._ref,
        [
            {"text": "The user's favourite colour is blue", "quality_score": 0.4, "metadata": {"a": 1}},
            {"text": "The user's favorite color is blue", "quality_score": 0.8, "metadata": {"b": 2}},
        ],
    )
    assert results[1]["merged"] is True and results[1]["id"] == results[0]["id"]
    (kept,) = await s.list_memories()
    assert kept["text"] == "The user's favourite colour is blue"
    assert kept["quality_score"] == 0.8 and kept["metadata"] == {"a": 1, "b": 2}
    await s.close()


async def test_add_memories_is_all_or_nothing_and_names_the_bad_item(
    memory_server: ServerThread,  # noqa: F811
) -> None:
    s = AsyncSession("s1", user_id="carol", address=memory_server.address)
    memory = client_of(s)
    with pytest.raises(InvalidArgument) as info:
        await memory.add_many(s._ref, ["fine", "", "also fine"])
    assert info.value.violations[0].field == "memories[1].text"
    with pytest.raises(InvalidArgument) as info:
        await memory.add_many(s._ref, ["fine", {"text": "x", "quality_score": 2.0}])
    assert info.value.violations[0].field == "memories[1].quality_score"
    with pytest.raises(InvalidArgument):
        await memory.add_many(s._ref, [])
    with pytest.raises(InvalidArgument):
        await memory.add_many(s._ref, [{"text": "x", "colour": "blue"}])
    assert await s.list_memories() == []
    await s.close()


def test_add_memories_is_applied_once_per_idempotency_key(memory_server: ServerThread) -> None:  # noqa: F811
    request = memory_pb2.AddMemoriesRequest(
        session=common_pb2.SessionRef(app_name="default", user_id="dave", session_id="s1"),
        memories=[memory_pb2.NewMemory(text="Plays the cello"), memory_pb2.NewMemory(text="Speaks Dutch")],
        idempotency_key="batch-1",
    )
    with grpc.insecure_channel(memory_server.address) as channel:
        stub = memory_pb2_grpc.MemoryServiceStub(channel)  # type: ignore[no-untyped-call]
        first = stub.AddMemories(request)
        again = stub.AddMemories(request)
        listed = stub.ListMemories(memory_pb2.ListMemoriesRequest(session=request.session))
    assert [r.memory.id for r in again.results] == [r.memory.id for r in first.results]
    assert not any(r.deduplicated for r in again.results)  # the first response, replayed
    assert sorted(m.text for m in listed.memories) == ["Plays the cello", "Speaks Dutch"]


async def test_concurrent_single_adds_share_model_calls() -> None:
    class Counting(LocalEmbedder):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[int] = []

        async def embed(self, texts: list[str]) -> list[list[float]]:
            self.calls.append(len(texts))
            return await super().embed(texts)

    embedder = Counting()
    texts = [f"memory number {n} about topic {n * 7}" for n in range(16)]
    alone = await embedder.embed(texts)
    embedder.calls.clear()
    batcher = EmbeddingBatcher(embedder)
    together = await asyncio.gather(*(batcher.embed_one(text) for text in texts))
    assert sum(embedder.calls) == 16 and len(embedder.calls) <= 2  # the first alone, then the rest
    for a, b in zip(alone, together, strict=True):
        assert sum(x * y for x, y in zip(a, b, strict=True)) == pytest.approx(1.0, abs=1e-4)
    # A lone call goes to the model at once, and a failure reaches its caller.
    assert len(await batcher.embed_one("alone")) == 384
    # The model refuses a non-text (sentence-transformers: ValueError; the tokenizer on ONNX: TypeError).
    with pytest.raises((ValueError, TypeError)):
        await batcher.embed_one(None)  # type: ignore[arg-type]
    assert len(await batcher.embed_one("still working")) == 384


# -- partitions, on the service's building blocks -------------------------------------------------------


def record(app: str, user: str, text: str, memory_type: int = t.LONG, session: str = "s1") -> MemoryRecord:
    now = time.time_ns() // 1000
    return MemoryRecord(
        "m-" + uuid.uuid4().hex, app, user, session, memory_type, text, content_hash(text),
        0.5, {}, now, now, None, 1,
    )  # fmt: skip


async def test_lexical_candidates_are_the_users_own_best_matches(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    store = MemoryStore(db)
    await store.start()
    # 300 other users' memories match "zebra" better (shorter texts) than alice's one.
    for n in range(300):
        await store.add(record("app", f"user{n}", "zebra"), "test", 100)
    mine = record("app", "alice", "We saw a zebra at the zoo near the old harbour last year")
    await store.add(mine, "test", 100)
    now = time.time_ns() // 1000
    assert [i for i, _ in await store.lexical(Owner("app", "alice", "s1"), None, "zebra", 5, now)] == [
        mine.id
    ]
    # Stop words alone match nothing; with content words they are ignored.
    assert await store.lexical(Owner("app", "alice", "s1"), None, "what is it that we", 5, now) == []
    assert [
        i for i, _ in await store.lexical(Owner("app", "alice", "s1"), t.LONG, "what zebra?", 5, now)
    ] == [mine.id]
    await db.close()


def test_stop_words_and_details() -> None:
    assert lexical_terms("What is my favourite colour?") == ["favourite", "colour"]
    assert lexical_terms("What is my favourite colour?", keep_stop_words=True)[:3] == ["what", "is", "my"]
    # FTS5 MATCH: every term quoted, so an operator or a column filter in the query is a plain word.
    assert fts5_match('NEAR(colour "blue") OR text: AND') == '"near" OR "colour" OR "blue" OR "text"'
    assert fts5_match("what is it?") == ""
    assert details("My dentist appointment is on Tuesday at 3 pm.") == {"tuesday", "3", "pm"}
    assert details("My favourite colour is blue.") == set()
    assert details("Omar lives in Lisbon and doesn't drive") == {"omar", "lisbon", "doesn't"}


async def test_a_data_directory_from_before_partitions_is_migrated_at_start(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    store = MemoryStore(db)
    await store.start()
    embedder = LocalEmbedder()
    index = ChromaIndex.embedded(tmp_path / "chroma")
    long = record("app", "alice", "Alice keeps bees on her roof")
    short = record("app", "alice", "We are comparing two laptops", t.SHORT, "s1")
    gone = record("app", "bob", "Bob's memory that was deleted")
    for r in (long, short):
        await store.add(r, "test", 100)
    await store.done([entry.id for entry in await store.pending()])  # applied, as before partitions
    # The index as it was: every memory of the app in one collection, filtered by user and bucket.
    vectors = await embedder.embed([long.text, short.text, gone.text])
    await index.upsert(
        app_collection("app"),
        [long.id, short.id, gone.id],
        vectors,
        [{"user_id": r.user_id, "bucket": r.bucket} for r in (long, short, gone)],
    )
    service = MemoryService(store, index, embedder)
    await service.start()
    try:
        assert not await index.exists(app_collection("app"))
        assert await index.ids(vector_collection("app", "alice", t.LONG, "s1")) == {long.id}
        assert await index.ids(vector_collection("app", "alice", t.SHORT, "s1")) == {short.id}
        assert not await index.exists(vector_collection("app", "bob", t.LONG, "s1"))  # no row: not moved
        alice = Owner("app", "alice", "s1")
        assert [h.memory.id for h in await service.search(alice, "beekeeping", limit=1)] == [long.id]
        assert [h.memory.id for h in await service.search(alice, "which laptop", t.SHORT, 1)] == [short.id]
        # Reindex rebuilds every partition from the rows, dropping what has no row.
        await index.upsert(vector_collection("app", "carol", t.LONG, ""), ["stray"], [vectors[2]], [{}])
        assert await service.reindex("app") == (2, 2)
        assert await index.ids(vector_collection("app", "alice", t.LONG, "s1")) == {long.id}
        assert not await index.exists(vector_collection("app", "carol", t.LONG, ""))
    finally:
        await service.close()
        await db.close()


async def test_clear_memories_by_metadata_filter(memory_server: ServerThread) -> None:  # noqa: F811
    s = AsyncSession("s1", user_id="erin", address=memory_server.address)
    other = AsyncSession("s1", user_id="erin-2", address=memory_server.address)
    memory = client_of(s)
    await s.add_memory("Trip to Oslo in June", topic="travel")
    await s.add_memory("Flight number SK 4411", topic="travel")
    await s.add_memory("Allergic to shellfish", topic="health")
    await s.add_memory("Looking at hotel options", memory_type="short", topic="travel")
    await other.add_memory("Trip to Rome in May", topic="travel")
    assert await memory.clear(s._ref, "long", metadata_filter={"topic": "travel"}) == 2
    assert sorted(m["text"] for m in await s.list_memories()) == [
        "Allergic to shellfish",
        "Looking at hotel options",
    ]
    assert all(h["metadata"]["topic"] == "health" for h in await s.search_memory("trip", memory_type="long"))
    assert [m["text"] for m in await other.list_memories()] == ["Trip to Rome in May"]
    with pytest.raises(InvalidArgument):
        await memory.clear(s._ref, metadata_filter={"topic": {"$in": ["travel"]}})
    await s.close()
    await other.close()


def test_session_add_memories_and_clear_by_metadata(tmp_path: Path) -> None:
    """The Session methods over AddMemories and ClearMemories.metadata_filter."""
    from sessionkit import Session
    from sessionkit_server.common.config import ServerSettings
    from tests.servers import ServerThread

    thread = ServerThread(
        ServerSettings(port=0, data_dir=tmp_path / "data", services=["state", "memory"], log_format="text")
    ).start()
    try:
        s = Session("batch", "alice", address=thread.address)
        added = s.add_memories(
            [
                "I live in Lisbon",
                {"text": "I play the cello", "metadata": {"topic": "music"}},
                "I live in Lisbon",
            ]
        )
        assert added is not None and [m["text"] for m in added] == [
            "I live in Lisbon",
            "I play the cello",
            "I live in Lisbon",
        ]
        assert len(s.list_memories("long")) == 2
        assert s.clear_memory("long", metadata_filter={"topic": "music"}) == 1
        assert [m["text"] for m in s.list_memories("long")] == ["I live in Lisbon"]
    finally:
        thread.stop()
