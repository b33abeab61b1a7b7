"""The knowledge service through the SDK, as users write it, on SQLite and PostgreSQL with embedded Chroma
and on SQLite with a real Chroma server: re-adding (idempotent and atomic replacement), concurrent adds,
scopes and clearing, and one vector partition per scope."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from sessionkit import AsyncSession
from sessionkit_server.retrieval.vector_index import partition_prefix
from tests.knowledge.support import _settings, session, vector_ids
from tests.servers import ServerThread


def test_readding_is_idempotent_and_a_change_replaces_the_chunks(
    knowledge_server: ServerThread, tmp_path: Path
) -> None:
    s = session(knowledge_server)
    doc = tmp_path / "policy.md"
    doc.write_text("# Policy\n\nRefunds are accepted within 30 days of purchase.\n")
    first = s.add_knowledge(str(doc))
    again = s.add_knowledge(str(doc))
    assert again["outcome"] == "unchanged" and again["chunks_added"] == 0
    assert again["source"]["id"] == first["source"]["id"]
    doc.write_text("# Policy\n\nReturns are possible within 14 days; store credit only.\n")
    updated = s.add_knowledge(str(doc))
    assert updated["outcome"] == "updated" and updated["source"]["id"] == first["source"]["id"]
    assert updated["chunks_removed"] == first["source"]["chunk_count"]
    assert len(s.list_knowledge()) == 1
    texts = [h["text"] for h in s.search_knowledge("refunds returns days purchase", limit=10)]
    assert texts and all("30 days" not in t for t in texts) and any("14 days" in t for t in texts)
    assert knowledge_server.host is not None
    index = knowledge_server.host.knowledge.index
    knowledge_server.call(knowledge_server.host.knowledge.vectors.settle())  # written behind the replies
    vectors = knowledge_server.call(vector_ids(index, "default", {"source_id": first["source"]["id"]}))
    assert len(vectors) == updated["source"]["chunk_count"]  # the old chunks' vectors are gone
    forced = s.add_knowledge(str(doc), force=True)
    assert forced["outcome"] == "updated"
    assert s.delete_knowledge("policy.md") is True
    assert s.search_knowledge("returns store credit") == []
    knowledge_server.call(knowledge_server.host.knowledge.vectors.settle())
    assert knowledge_server.call(vector_ids(index, "default", {"source_id": first["source"]["id"]})) == set()
    assert s.delete_knowledge("policy.md") is False
    readded = s.add_knowledge(str(doc))
    assert readded["outcome"] == "created" and readded["source"]["id"] != first["source"]["id"]


async def test_searches_during_replacement_never_mix_versions(knowledge_server: ServerThread) -> None:
    s = AsyncSession(f"s-{uuid.uuid4().hex[:8]}", user_id="atomic", address=knowledge_server.address)
    chunker = {"chunker": {"type": "token", "chunk_size": 16, "chunk_overlap": 0}}
    s.knowledge_config = chunker

    def body(tag: str) -> str:
        return " ".join(f"zebra{tag} stripe{n} savanna" for n in range(40))

    await s.add_knowledge(body("old"), name="animals")
    seen: list[set[str]] = []
    stop = asyncio.Event()

    async def searcher() -> None:
        while not stop.is_set():
            hits = await s.search_knowledge("zebra stripe savanna", limit=20, source_names=["animals"])
            seen.append({"old" if "zebraold" in h["text"] else "new" for h in hits})

    task = asyncio.create_task(searcher())
    for n in range(3):
        await s.add_knowledge(body("new" if n % 2 == 0 else "old"), name="animals")
    stop.set()
    await task
    assert seen and all(len(versions) <= 1 for versions in seen), seen


def test_scopes_and_clear(knowledge_server: ServerThread) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    a = session(knowledge_server, "a", user)
    b = session(knowledge_server, "b", user)
    other = session(knowledge_server, "a", f"{user}-other")
    a.add_knowledge("Session A note: the vault code is 4417")
    a.add_knowledge("User-wide note: the user prefers metric units", scope="user")
    assert b.search_knowledge("vault code") == [] or all(
        "vault" not in h["text"] for h in b.search_knowledge("vault code")
    )
    assert [h["text"] for h in b.search_knowledge("metric units preference", limit=1)] == [
        "User-wide note: the user prefers metric units"
    ]
    assert other.search_knowledge("metric units vault code") == []
    a.add_knowledge("Collection doc: office opens at 9", scope="collection", collection="handbook")
    assert b.search_knowledge("office opens") == [] or all(
        "office" not in h["text"] for h in b.search_knowledge("office opens")
    )
    assert b.search_knowledge("office opens", collections=["handbook"])[0]["scope"] == "collection"
    assert a.clear_knowledge() == 1
    assert a.search_knowledge("vault code 4417", scopes=["session"]) == []
    assert b.search_knowledge("metric units")  # clearing the session left the user's sources
    assert b.clear_knowledge("user") == 1
    assert a.list_knowledge() == []
    assert b.clear_knowledge("collection", "handbook") == 1


async def test_concurrent_adds_of_one_source_make_one_source(knowledge_server: ServerThread) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    clients = [AsyncSession("same", user_id=user, address=knowledge_server.address) for _ in range(8)]
    results = await asyncio.gather(
        *(c.add_knowledge("Penguins huddle to keep warm in Antarctic winter.") for c in clients)
    )
    assert len({r["source"]["id"] for r in results}) == 1
    assert sorted(r["outcome"] for r in results) == ["created"] + ["unchanged"] * 7
    assert len(await clients[0].list_knowledge()) == 1
    hits = await clients[0].search_knowledge("penguins huddle", limit=10)
    assert len(hits) == 1


def test_vectors_live_in_one_partition_per_scope_and_old_collections_are_moved(tmp_path: Path) -> None:
    server = ServerThread(_settings(tmp_path)).start()
    try:
        s = session(server, "s1", "ana")
        s.add_knowledge("Session note: the boiler is serviced in May")
        s.add_knowledge("User note: ana prefers metric units", scope="user")
        assert server.host is not None
        service = server.host.knowledge
        index = service.index
        # An add's vectors are written behind its reply: wait until both adds' are in the index.
        server.call(service.vectors.settle())
        partitions = server.call(index.collections(partition_prefix("knowledge:default")))
        assert len(partitions) == 2  # the session's and the user's
        # A deployment from before partitions kept every vector of the app in one collection.
        for coll in partitions:
            entries = server.call(index.entries(coll, 0, 100))
            server.call(
                index.upsert(
                    "knowledge:default",
                    [e.id for e in entries],
                    [e.vector for e in entries],
                    [e.metadata for e in entries],
                )
            )
            server.call(index.drop(coll))
        assert server.call(service.migrate_vectors()) == 2  # what start-up does
        assert not server.call(index.exists("knowledge:default"))
        assert server.call(index.collections(partition_prefix("knowledge:default"))) == partitions
        assert s.search_knowledge("when is the heating maintained", limit=1)[0]["text"].startswith("Session")
    finally:
        server.stop()


def test_vectors_written_behind_the_reply_are_searchable_and_survive_an_index_failure(
    knowledge_server: ServerThread, monkeypatch: Any
) -> None:
    """An add answers once its rows are committed; its vectors follow (VectorOutbox.write_behind). A
    search right after finds the chunk by meaning, and when the index refuses the write the vectors
    stay in the outbox and the next drain writes them."""
    s = session(knowledge_server)
    s.add_knowledge("Barn owls hunt voles at night by sound alone.")
    hits = s.search_knowledge("nocturnal birds of prey", limit=1)  # no shared word: dense only
    assert hits and hits[0]["text"].startswith("Barn owls") and hits[0]["scores"]["semantic"] > 0
    assert knowledge_server.host is not None
    service = knowledge_server.host.knowledge
    real_upsert = service.index.upsert
    failures: list[str] = []

    async def refuse(collection: str, *args: Any) -> None:
        failures.append(collection)
        raise RuntimeError("the index is down")

    monkeypatch.setattr(service.index, "upsert", refuse)
    added = s.add_knowledge("Swifts sleep while flying over the ocean.")
    knowledge_server.call(service.vectors.settle())
    assert failures  # the write behind was tried and failed: the entries are still pending
    assert knowledge_server.call(service.store.pending(100))
    monkeypatch.setattr(service.index, "upsert", real_upsert)
    knowledge_server.call(service.drain_outbox())
    vectors = knowledge_server.call(
        vector_ids(service.index, "default", {"source_id": added["source"]["id"]})
    )
    assert len(vectors) == added["source"]["chunk_count"]
