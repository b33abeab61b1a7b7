"""The memory service through the SDK, as users write it: the seed's memory methods, scopes and
isolation, dedup under concurrency, near-duplicate merging, hybrid search, history, bad input.
Runs on SQLite and PostgreSQL with embedded Chroma, and on SQLite with a real Chroma server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessionkit import AsyncSession, InvalidArgument, NotFound, NotImplementedByServer, Session
from sessionkit_server.common.config import ServerSettings
from sessionkit_server.retrieval.embeddings import LocalEmbedder
from tests.chroma_server import chroma_server  # noqa: F401 - fixture
from tests.conftest import _truncate
from tests.servers import ServerThread


@pytest.fixture(params=["sqlite", "postgres", "chroma-server"])
def memory_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerThread]:
    kind = request.param
    url = ""
    vector_url = ""
    if kind == "postgres":
        url = request.getfixturevalue("pg_database")
    if kind == "chroma-server":
        vector_url = request.getfixturevalue("chroma_server")
    settings = ServerSettings(
        port=0,
        data_dir=tmp_path / "data",
        database_url=url,
        vector_url=vector_url,
        services=["state", "memory"],
        log_format="text",
    )
    thread = ServerThread(settings).start()
    yield thread
    thread.stop()
    if url:
        asyncio.run(_truncate(url))


def session(server: ServerThread, sid: str = "s1", user: str = "alice", **kwargs: object) -> Session:
    return Session(session_id=sid, user_id=user, address=server.address, **kwargs)  # type: ignore[arg-type]


def test_seed_memory_methods(memory_server: ServerThread) -> None:
    s = session(memory_server, "assistant_session")
    s.store_long_memory("User's favorite color: blue", quality_score=0.9)
    s.store_long_memory("User works as a marine biologist in Lisbon")
    s.store_short_memory("We are discussing the quarterly report")
    hits = s.search_memory("What's my favorite color?")
    assert hits[0]["text"] == "User's favorite color: blue"
    assert hits[0]["memory_type"] == "long" and hits[0]["quality_score"] == 0.9
    assert set(hits[0]) >= {"id", "text", "memory_type", "score", "scores", "metadata"}
    context = s.get_memory_context("What's my favorite color?", max_items=1)
    assert "favorite color: blue" in context and "marine" not in context
    assert [h["text"] for h in s.search_memory("quarterly report", memory_type="short")] == [
        "We are discussing the quarterly report"
    ]


def test_session_restoration_finds_long_memory_from_a_new_session(memory_server: ServerThread) -> None:
    session1 = session(memory_server, "project_alpha")
    session1.save_state({"progress": 75, "phase": "testing"})
    session1.store_long_memory("Completed unit tests successfully")
    session2 = session(memory_server, "project_alpha")
    memories = session2.search_memory("unit tests")
    assert memories and memories[0]["text"] == "Completed unit tests successfully"
    # Long-term memory is the user's: another session of the same user finds it too.
    assert session(memory_server, "another")
    assert session(memory_server, "another").search_memory("unit tests", memory_type="long")


def test_short_memory_is_the_sessions_and_long_memory_the_users(memory_server: ServerThread) -> None:
    a1, a2 = session(memory_server, "one"), session(memory_server, "two")
    a1.store_short_memory("The user is looking at invoice 7731")
    a1.store_long_memory("The user's company is Acme")
    assert a2.search_memory("invoice 7731", memory_type="short") == []
    assert [h["text"] for h in a2.search_memory("which company", memory_type="long")] == [
        "The user's company is Acme"
    ]
    assert a1.clear_memory("short") == 1
    assert a1.search_memory("invoice", memory_type="short") == []
    assert a2.search_memory("company Acme", memory_type="long")  # clearing short left long alone


def test_users_never_see_or_delete_each_others_memories(memory_server: ServerThread) -> None:
    acme = session(memory_server, "shared-id", user="acme")
    corp = session(memory_server, "shared-id", user="acme-corp")
    mine = acme.store_long_memory("Acme's secret launch date is March 3")
    assert mine is not None
    corp.store_long_memory("Corp prefers email")
    assert all("secret" not in h["text"] for h in corp.search_memory("secret launch date", limit=10))
    with pytest.raises(NotFound):
        corp.get_memory(mine["id"])
    with pytest.raises(NotFound):
        corp.delete_memory(mine["id"])
    assert corp.clear_memory("all") == 1
    assert [m["text"] for m in acme.list_memories()] == ["Acme's secret launch date is March 3"]


def test_the_same_text_twice_is_one_memory(memory_server: ServerThread) -> None:
    s = session(memory_server)
    first = s.store_long_memory("Prefers window seats")
    again = s.store_long_memory("  prefers   WINDOW seats ")
    assert first is not None and again is not None
    assert again["id"] == first["id"] and again["deduplicated"] is True
    assert len(s.list_memories()) == 1


async def test_sixteen_concurrent_adds_of_one_text_make_one_row(memory_server: ServerThread) -> None:
    clients = [AsyncSession("s1", user_id="bob", address=memory_server.address) for _ in range(16)]
    results = await asyncio.gather(*(c.store_long_memory("Allergic to peanuts") for c in clients))
    assert len({r["id"] for r in results if r}) == 1
    assert len(await clients[0].list_memories()) == 1


def test_near_duplicates_are_merged_keeping_the_higher_quality(memory_server: ServerThread) -> None:
    s = session(memory_server)
    first = s.store_long_memory("The user's favourite colour is blue", quality_score=0.6)
    merged = s.store_long_memory("The user's favorite color is blue", quality_score=0.9)
    assert first is not None and merged is not None
    assert merged["merged"] is True and merged["id"] == first["id"]
    assert merged["quality_score"] == 0.9
    assert len(s.list_memories()) == 1
    assert [c["operation"] for c in s.memory_history(first["id"])] == ["ADD", "MERGE"]


# Pairs the embedding model finds near-identical (cosine >= the 0.93 merge threshold, checked below)
# that state different facts: merging the second into the first would lose it.
DIFFERENT_DETAILS = [
    ("My dentist appointment is on Tuesday at 3 pm.", "My dentist appointment is on Friday at 10 am."),
    (
        "Can you give me three ideas for a Saturday dinner?",
        "Can you give me three ideas for a Wednesday dinner?",
    ),
    ("I have a meeting with the design team at 2 pm.", "I have a meeting with the design team at 4 pm."),
    ("My flight to Tokyo is on May 3rd.", "My flight to Tokyo is on May 5th."),
    ("Remind me to call the plumber tomorrow morning", "Remind me to call the plumber tomorrow evening"),
    ("I am allergic to peanuts.", "I am not allergic to peanuts."),
]


async def test_the_premise_those_pairs_are_above_the_merge_threshold() -> None:
    embedder = LocalEmbedder()
    for first, second in DIFFERENT_DETAILS:
        a, b = await embedder.embed([first, second])
        assert sum(x * y for x, y in zip(a, b, strict=True)) >= 0.93, (first, second)


@pytest.mark.parametrize(("first", "second"), DIFFERENT_DETAILS)
def test_near_duplicates_with_different_details_are_both_kept(
    memory_server: ServerThread, first: str, second: str
) -> None:
    s = session(memory_server)
    old = s.store_long_memory(first)
    new = s.store_long_memory(second)
    assert old is not None and new is not None
    assert new["merged"] is False and new["id"] != old["id"] and new["text"] == second
    assert sorted(m["text"] for m in s.list_memories()) == sorted([first, second])
    assert [c["operation"] for c in s.memory_history(old["id"])] == ["ADD"]  # the old one untouched


def test_search_filters_and_ranking(memory_server: ServerThread) -> None:
    s = session(memory_server)
    s.add_memory("Flight to Tokyo on May 3rd", memory_type="long", quality_score=0.9, topic="travel")
    s.add_memory(
        "Hotel in Shinjuku booked for three nights", memory_type="long", quality_score=0.4, topic="travel"
    )
    s.add_memory("Dentist appointment on Friday", memory_type="long", quality_score=0.8, topic="health")
    travel = s.search_memory("Tokyo trip plans", limit=5, metadata_filter={"topic": "travel"})
    assert {h["text"] for h in travel} <= {
        "Flight to Tokyo on May 3rd",
        "Hotel in Shinjuku booked for three nights",
    }
    assert travel[0]["text"] == "Flight to Tokyo on May 3rd"
    assert all(h["quality_score"] >= 0.5 for h in s.search_memory("Tokyo hotel", min_quality=0.5))
    scores = [h["score"] for h in s.search_memory("appointment", limit=3)]
    assert scores == sorted(scores, reverse=True)


def test_update_delete_and_history(memory_server: ServerThread) -> None:
    s = session(memory_server)
    memory = s.store_long_memory("Lives in Porto")
    assert memory is not None
    updated = s.update_memory(memory["id"], "Lives in Lisbon", quality_score=0.95)
    assert updated["text"] == "Lives in Lisbon" and updated["revision"] == 2
    assert s.search_memory("Lisbon")[0]["id"] == memory["id"]
    assert s.delete_memory(memory["id"]) is True
    assert s.search_memory("Lisbon") == []
    history = s.memory_history(memory["id"])
    assert [c["operation"] for c in history] == ["ADD", "UPDATE", "DELETE"]
    assert history[1]["old_text"] == "Lives in Porto" and history[1]["new_text"] == "Lives in Lisbon"


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda s: s.store_long_memory(""), "text"),
        (lambda s: s.store_long_memory("x" * (1 << 20)), "text"),
        (lambda s: s.store_long_memory("fine", quality_score=1.5), "quality_score"),
        (lambda s: s.search_memory("q", limit=0), "limit"),
        (lambda s: s.search_memory("q", limit=10_000), "limit"),
        (lambda s: s.search_memory("q", memory_type="medium"), "memory_type"),
        (lambda s: s.search_memory("q", metadata_filter={"a": {"$gt": 1}}), "metadata_filter"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(
    memory_server: ServerThread, call: object, field: str
) -> None:
    s = session(memory_server, "bad")
    with pytest.raises(InvalidArgument) as info:
        call(s)  # type: ignore[operator]
    assert field in str(info.value)
    assert s.list_memories() == []


def test_memory_config_is_checked_and_none_disables_memory(memory_server: ServerThread) -> None:
    with pytest.raises(InvalidArgument) as info:
        session(memory_server, memory_config={"provider": "rag", "colour": "blue"})
    assert "colour" in str(info.value)
    with pytest.raises(NotImplementedByServer):
        session(memory_server, memory_config={"use_embedding": False})
    # "mem0" (LLM fact extraction) is accepted; tests/memory/test_memory_extraction.py covers it.
    assert session(memory_server, memory_config={"provider": "mem0"}).memory_config == {"provider": "mem0"}
    seeded = {
        "provider": "rag",
        "use_embedding": True,
        "rag_db_path": ".praison/x",
        "short_db": "a",
        "long_db": "b",
    }
    assert session(memory_server, memory_config=seeded).store_long_memory("kept") is not None
    off = session(memory_server, "off", memory_config={"provider": "none"})
    assert off.store_long_memory("not kept") is None
    assert off.search_memory("kept") == []
