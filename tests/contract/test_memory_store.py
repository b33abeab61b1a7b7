"""The memory store's contract (sessionkit_server.memory.store.MemoryStore) on SQLite and PostgreSQL:
who sees which memory, dedup, the short-term window, paging and order, revisions, history, idempotent
writes, deletes, lexical search, and text the backends store alike (or, documented, do not)."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import Connection, text

from sessionkit.errors import InvalidArgument, NotFound, StateConflict
from sessionkit_server.common.db import Database
from sessionkit_server.common.idempotency import Idempotency, Replayed
from sessionkit_server.common.identity import Owner
from sessionkit_server.memory.records import ADD, DELETE, MERGE, UPDATE, AddOutcome, MemoryRecord, MergeInto
from sessionkit_server.memory.store import MemoryStore
from sessionkit_server.memory.tables import LONG, SHORT

ALICE = Owner("app", "alice", "s1")
ALICE_S2 = Owner("app", "alice", "s2")
BOB = Owner("app", "bob", "s1")
OTHER_APP = Owner("other", "alice", "s1")


def now_us() -> int:
    return time.time_ns() // 1000


def memory(
    owner: Owner,
    text: str,
    memory_type: int = LONG,
    *,
    at: int | None = None,
    expire_us: int | None = None,
    quality: float = 0.5,
    metadata: dict | None = None,  # type: ignore[type-arg]
) -> MemoryRecord:
    t = now_us() if at is None else at
    digest = hashlib.sha256(text.encode()).hexdigest()
    return MemoryRecord(
        f"mem_{uuid.uuid4().hex[:20]}", owner.app_name, owner.user_id, owner.session_id, memory_type,
        text, digest, quality, metadata or {}, t, t, expire_us, 1,
    )  # fmt: skip


@pytest.fixture
async def store(database: Database) -> MemoryStore:
    store = MemoryStore(database)
    await store.start()
    return store


async def add(store: MemoryStore, record: MemoryRecord, window: int = 0) -> AddOutcome:
    return await store.add(record, "tester", window)


async def texts(store: MemoryStore, owner: Owner, memory_type: int | None = None) -> list[str]:
    page = await store.list_page(owner, memory_type, 1000, 0, now_us())
    return [record.text for _, record in page]


# -- ownership ----------------------------------------------------------------------------------------


async def test_long_term_memories_are_the_users_and_short_term_the_sessions(store: MemoryStore) -> None:
    long = (await add(store, memory(ALICE, "likes tea"))).memory
    short = (await add(store, memory(ALICE, "is in Paris today", SHORT))).memory
    t = now_us()
    assert await texts(store, ALICE) == ["likes tea", "is in Paris today"]
    assert await texts(store, ALICE_S2) == ["likes tea"]  # another session of the user: long-term only
    assert await texts(store, ALICE, SHORT) == ["is in Paris today"]
    assert await texts(store, ALICE, LONG) == ["likes tea"]
    for stranger in (BOB, OTHER_APP):
        assert await texts(store, stranger) == []
        assert await store.get(stranger, long.id, t) is None
        assert await store.by_ids(stranger, [long.id, short.id], t) == {}
        assert await store.by_hash(stranger, LONG, long.content_hash, t) is None
        assert await store.by_hashes(stranger, [long.content_hash], t) == {}
        assert await store.changes(stranger, long.id, None, 10, 0) == []
        assert await store.lexical(stranger, None, "tea", 5, t) == []
    assert await store.get(ALICE_S2, short.id, t) is None
    assert set(await store.by_ids(ALICE, [long.id, short.id], t)) == {long.id, short.id}
    assert set(await store.by_ids(ALICE_S2, [long.id, short.id], t)) == {long.id}


async def test_another_owner_cannot_update_or_delete(store: MemoryStore) -> None:
    record = (await add(store, memory(ALICE, "likes tea"))).memory
    for stranger in (BOB, OTHER_APP):
        with pytest.raises(NotFound) as info:
            await store.update(stranger, record.id, now_us(), "x", quality=0.9)
        assert info.value.reason == "MEMORY_NOT_FOUND"
        with pytest.raises(NotFound):
            await store.delete(stranger, record.id, now_us(), "x")
        assert await store.clear(stranger, None, now_us(), "x") == []
    got = await store.get(ALICE, record.id, now_us())
    assert got is not None and (got.quality, got.revision) == (0.5, 1)


async def test_expired_memories_are_invisible(store: MemoryStore) -> None:
    t = now_us()
    record = (await add(store, memory(ALICE, "short-lived", expire_us=t + 1000, at=t))).memory
    assert await store.get(ALICE, record.id, t + 999) is not None
    assert await store.get(ALICE, record.id, t + 1000) is None
    assert await store.list_page(ALICE, None, 10, 0, t + 1000) == []


# -- dedup, the window, paging --------------------------------------------------------------------------


async def test_the_same_content_is_stored_once_per_scope(store: MemoryStore) -> None:
    first = await add(store, memory(ALICE, "likes tea"))
    again = await add(store, memory(ALICE_S2, "likes tea"))  # long-term: the user's scope
    assert again.deduplicated and again.memory.id == first.memory.id
    short_a = await add(store, memory(ALICE, "likes tea", SHORT))
    short_b = await add(store, memory(ALICE_S2, "likes tea", SHORT))
    bob = await add(store, memory(BOB, "likes tea"))
    assert not (short_a.deduplicated or short_b.deduplicated or bob.deduplicated)
    assert len({first.memory.id, short_a.memory.id, short_b.memory.id, bob.memory.id}) == 4
    assert len(await store.changes(ALICE, "", LONG, 10, 0)) == 1  # a duplicate logs nothing


async def test_the_short_term_window_evicts_the_oldest(store: MemoryStore) -> None:
    t = now_us()
    ids = []
    for n in range(5):
        outcome = await store.add(memory(ALICE, f"fact {n}", SHORT, at=t + n), "tester", 3)
        ids.append(outcome.memory.id)
        assert outcome.evicted == (ids[n - 3 : n - 2] if n >= 3 else [])
    assert await texts(store, ALICE, SHORT) == ["fact 2", "fact 3", "fact 4"]
    await add(store, memory(ALICE, "long one"))
    assert await texts(store, ALICE) == ["fact 2", "fact 3", "fact 4", "long one"]  # long: not windowed


async def test_pages_follow_insertion_order_without_gaps_or_repeats(store: MemoryStore) -> None:
    for n in range(7):
        await add(store, memory(ALICE, f"fact {n}"))
        await add(store, memory(BOB, f"bob {n}"))
    seen: list[str] = []
    after = 0
    while page := await store.list_page(ALICE, None, 3, after, now_us()):
        assert len(page) <= 3
        seen += [record.text for _, record in page]
        after = page[-1][0]
    assert seen == [f"fact {n}" for n in range(7)]


# -- updates, history, deletes --------------------------------------------------------------------------


async def test_update_bumps_the_revision_checks_the_expected_one_and_logs_history(store: MemoryStore) -> None:
    record = (await add(store, memory(ALICE, "likes tea"))).memory
    t = now_us()
    new_hash = hashlib.sha256(b"likes green tea").hexdigest()
    updated = await store.update(
        ALICE, record.id, t, "editor", text_hash=("likes green tea", new_hash), expected_revision=1
    )
    assert (updated.text, updated.revision, updated.update_us) == ("likes green tea", 2, t)
    with pytest.raises(StateConflict) as info:
        await store.update(ALICE, record.id, t, "editor", quality=0.1, expected_revision=1)
    assert info.value.reason == "MEMORY_CONFLICT"
    merged = await store.update(ALICE, record.id, t + 1, "m", metadata={"k": "v"}, operation=MERGE)
    assert merged.revision == 3 and merged.metadata == {"k": "v"} and merged.text == "likes green tea"
    history = await store.changes(ALICE, record.id, None, 10, 0)
    assert [(c.operation, c.revision, c.actor) for c in history] == [
        (ADD, 1, "tester"),
        (UPDATE, 2, "editor"),
        (MERGE, 3, "m"),
    ]
    assert (history[1].old_text, history[1].new_text) == ("likes tea", "likes green tea")
    assert [c.id for c in await store.changes(ALICE, record.id, None, 10, history[0].id)] == [
        c.id for c in history[1:]
    ]


async def test_delete_removes_the_memory_and_logs_it(store: MemoryStore) -> None:
    record = (await add(store, memory(ALICE, "likes tea"))).memory
    with pytest.raises(StateConflict):
        await store.delete(ALICE, record.id, now_us(), "x", expected_revision=7)
    gone = await store.delete(ALICE, record.id, now_us(), "x", expected_revision=1)
    assert gone.id == record.id
    assert await store.get(ALICE, record.id, now_us()) is None
    with pytest.raises(NotFound):
        await store.delete(ALICE, record.id, now_us(), "x")
    assert [c.operation for c in await store.changes(ALICE, record.id, None, 10, 0)] == [ADD, DELETE]
    assert not (await add(store, memory(ALICE, "likes tea"))).deduplicated  # the content is free again


async def test_clear_deletes_only_the_owners_memories_of_the_type(store: MemoryStore) -> None:
    long = (await add(store, memory(ALICE, "long"))).memory
    short = (await add(store, memory(ALICE, "short", SHORT))).memory
    other_session = (await add(store, memory(ALICE_S2, "other session", SHORT))).memory
    await add(store, memory(BOB, "bob's"))
    assert await store.clear(ALICE, SHORT, now_us(), "x") == [short.id]
    assert await store.clear(ALICE, None, now_us(), "x", matches=lambda r: r.text != "long") == []
    assert await store.clear(ALICE, None, now_us(), "x") == [long.id]
    assert await texts(store, ALICE_S2) == ["other session"]
    assert await store.get(ALICE_S2, other_session.id, now_us()) is not None
    assert await texts(store, BOB) == ["bob's"]


async def test_add_many_is_all_or_nothing_and_merges(store: MemoryStore) -> None:
    target = (await add(store, memory(ALICE, "likes tea", quality=0.4, metadata={"a": 1}))).memory
    t = now_us()
    items: list[MemoryRecord | MergeInto] = [
        memory(ALICE, "new fact"),
        MergeInto(target.id, 0.9, {"b": 2}, memory(ALICE, "fallback")),
        MergeInto("mem_gone", 0.9, {}, memory(ALICE, "stored instead")),
    ]
    outcomes = await store.add_many(ALICE, items, "batch", 0, t)
    assert [(o.memory.text, o.merged) for o in outcomes] == [
        ("new fact", False),
        ("likes tea", True),
        ("stored instead", False),
    ]
    assert (outcomes[1].memory.quality, outcomes[1].memory.metadata) == (0.9, {"a": 1, "b": 2})

    before = await texts(store, ALICE)
    clash = memory(ALICE, "would be new")
    clash.id = outcomes[0].memory.id  # the unique id: the second insert of the batch fails
    with pytest.raises(Exception):  # noqa: B017 - the database's own integrity error
        await store.add_many(ALICE, [memory(ALICE, "first of a failed batch"), clash], "batch", 0, t)
    assert await texts(store, ALICE) == before


# -- idempotent writes ----------------------------------------------------------------------------------


def key(name: str, method: str) -> Idempotency[AddOutcome]:
    return Idempotency(name, method, lambda outcome: outcome.memory.id.encode())


async def test_an_add_with_a_key_is_applied_once(store: MemoryStore) -> None:
    first = await store.add(memory(ALICE, "likes tea"), "x", 0, key("k1", "AddMemory"))
    with pytest.raises(Replayed) as replay:
        await store.add(memory(ALICE_S2, "something else"), "x", 0, key("k1", "AddMemory"))
    assert replay.value.response == first.memory.id.encode()
    assert await texts(store, ALICE) == ["likes tea"]
    await store.add(memory(BOB, "bob's"), "x", 0, key("k1", "AddMemory"))  # bob's own key space
    with pytest.raises(Replayed):
        await store.replay("app", "alice", "k1", "AddMemory", now_us())


async def test_a_deleted_memory_is_deleted_once_with_a_key(store: MemoryStore) -> None:
    record = (await add(store, memory(ALICE, "likes tea"))).memory
    delete_key: Idempotency[MemoryRecord] = Idempotency("d1", "DeleteMemory", lambda r: r.id.encode())
    await store.delete(ALICE, record.id, now_us(), "x", idem=delete_key)
    with pytest.raises(Replayed) as replay:
        await store.delete(ALICE, record.id, now_us(), "x", idem=delete_key)
    assert replay.value.response == record.id.encode()


# -- lexical search -------------------------------------------------------------------------------------


async def test_lexical_search_ranks_the_owners_matches(store: MemoryStore) -> None:
    tea = (await add(store, memory(ALICE, "Alice drinks green tea every morning"))).memory
    both = (await add(store, memory(ALICE, "green tea and tea cakes: tea all day"))).memory
    # Another session: a memory written right after "tea cakes" in the same session would match "tea"
    # through its lexical context (the next test).
    await add(store, memory(ALICE_S2, "Alice rides a bicycle"))
    await add(store, memory(BOB, "Bob drinks tea too"))
    hits = await store.lexical(ALICE, None, "tea", 10, now_us())
    assert {memory_id for memory_id, _ in hits} == {tea.id, both.id}
    assert all(score >= 0 for _, score in hits)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert await store.lexical(ALICE, None, "the and of", 10, now_us()) == []  # stop words only
    assert len(await store.lexical(ALICE, None, "tea", 1, now_us())) == 1


async def test_lexical_search_stems_and_ignores_stop_words_alike(store: MemoryStore) -> None:
    await add(store, memory(ALICE, "The weather was nice"))
    hiking = (await add(store, memory(ALICE, "She hiked up the mountains with her dogs"))).memory
    # "hiking" / "hiked", "mountain" / "mountains", "dog" / "dogs": one stem each; "what", "did",
    # "she" are stop words and match nothing on their own.
    assert [i for i, _ in await store.lexical(ALICE, None, "what hiking mountain dog", 10, now_us())] == [
        hiking.id
    ]
    assert await store.lexical(ALICE, None, "what did she", 10, now_us()) == []


async def test_lexical_search_matches_any_term_and_ranks_more_terms_first(store: MemoryStore) -> None:
    one = (await add(store, memory(ALICE, "We adopted a puppy last spring"))).memory
    two = (await add(store, memory(ALICE, "The puppy chewed the sofa cushions"))).memory
    hits = [i for i, _ in await store.lexical(ALICE, None, "puppy sofa", 10, now_us())]
    assert hits == [two.id, one.id]  # any term matches (OR); both terms rank first


async def test_lexical_search_prefers_the_shorter_of_two_equal_matches(store: MemoryStore) -> None:
    filler = " ".join(["and then we talked about many other things at length"] * 6)
    long = (await add(store, memory(ALICE, f"Lisbon trip {filler}"))).memory
    short = (await add(store, memory(ALICE_S2, "Lisbon trip booked"))).memory
    hits = [i for i, _ in await store.lexical(ALICE, None, "Lisbon trip", 10, now_us())]
    assert hits == [short.id, long.id]  # document-length normalisation on both backends


async def test_lexical_search_ranks_a_rare_word_above_a_common_one(store: MemoryStore) -> None:
    """BM25's inverse document frequency: a memory holding the query's rare word (a name in one
    memory) outranks one holding its common word twice ("coffee" in most memories). ts_rank, with no
    document frequencies, ranked the two "coffee" the higher."""
    for n in range(5):
        await add(store, memory(ALICE_S2, f"coffee at the office, cup number {n}"))
    common = (await add(store, memory(ALICE, "coffee, more coffee"))).memory
    rare = (await add(store, memory(ALICE_S2, "We flew to Zanzibar"))).memory
    for _ in range(3):  # another user's words never count in Alice's ranking nor come back
        await add(store, memory(BOB, f"Zanzibar, Zanzibar and Zanzibar {uuid.uuid4().hex}"))
    hits = await store.lexical(ALICE, LONG, "coffee Zanzibar", 10, now_us())
    assert [i for i, _ in hits][:2] == [rare.id, common.id]
    assert len(hits) == 7  # Alice's six coffee memories and her Zanzibar one, none of Bob's
    scores = dict(hits)
    assert scores[rare.id] > 2 * scores[common.id]


async def test_lexical_statistics_of_another_user_do_not_move_a_ranking(store: MemoryStore) -> None:
    """On PostgreSQL BM25's statistics (row count, average length, document frequencies) are the
    searching user's own (migration m0006): Bob's memories leave Alice's scores as they were. SQLite's
    FTS5 keeps one set of statistics for the whole table (documented in docs/MEMORY.md)."""
    if not store.db.is_postgres:
        pytest.skip("FTS5's bm25 statistics cover every user's rows (docs/MEMORY.md)")
    await add(store, memory(ALICE, "We flew to Zanzibar in June"))
    await add(store, memory(ALICE_S2, "the flight was long"))
    before = await store.lexical(ALICE, LONG, "Zanzibar flight", 10, now_us())
    for n in range(20):
        await add(store, memory(BOB, f"Zanzibar flight {n} " + "word " * n))
    after = await store.lexical(ALICE, LONG, "Zanzibar flight", 10, now_us())
    assert after == before and len(before) == 2
    # Deletes and updates keep the statistics too: clearing Bob's memories leaves Alice's ranking as is.
    await store.clear(BOB, None, now_us(), "tester")
    assert await store.lexical(ALICE, LONG, "Zanzibar flight", 10, now_us()) == before
    # The statistics rows are the sums of the rows after inserts, a text update and deletes.
    (first, _) = [i for i, _ in before]
    await store.update(ALICE, first, now_us(), "tester", text_hash=("Zanzibar, June", "h2"))
    await add(store, memory(BOB, "one more"))

    def sums(conn: Connection) -> tuple[list[Any], list[Any]]:
        kept = conn.execute(
            text(
                "SELECT app_name, user_id, docs, tokens FROM sk_memory_lexical_stats "
                "WHERE docs > 0 ORDER BY 1, 2"
            )
        ).all()
        rows = conn.execute(
            text(
                "SELECT app_name, user_id, count(*), sum(tsv_len) FROM sk_memories "
                "GROUP BY 1, 2 ORDER BY 1, 2"
            )
        ).all()
        return [tuple(r) for r in kept], [tuple(r) for r in rows]

    kept, counted = await store.db.read(sums)
    assert kept == counted and len(kept) == 2


async def test_a_memory_is_found_by_the_words_of_the_one_its_session_wrote_before(store: MemoryStore) -> None:
    question = (await add(store, memory(ALICE, "Where did you go for your birthday?"))).memory
    answer = (await add(store, memory(ALICE, "We went to Porto and ate far too much"))).memory
    other = (await add(store, memory(ALICE_S2, "Porto was lovely"))).memory  # another session
    await add(store, memory(ALICE_S2, "My sister lives in Madrid"))
    hits = [i for i, _ in await store.lexical(ALICE, LONG, "birthday", 10, now_us())]
    # The question itself first (its own text), then the answer through its context; the other
    # session's memory written after "Porto was lovely" does not inherit Alice's s1 birthday.
    assert hits == [question.id, answer.id]
    hits = [i for i, _ in await store.lexical(ALICE, LONG, "Madrid", 10, now_us())]
    assert other.id not in hits and len(hits) == 1


# -- text on both backends --------------------------------------------------------------------------------

UNICODE = "naïve café ☕ 日本語のメモ 🙂🏳️‍🌈 עִבְרִית e\u0301 \U0001f600 tab\tnewline\n end"


async def test_unicode_text_and_metadata_round_trip(store: MemoryStore) -> None:
    metadata = {"ключ": "значение 🙂", "nul": "a\x00b", "nested": {"list": ["ü", 1.5, None, True]}}
    record = (await add(store, memory(ALICE, UNICODE, metadata=metadata))).memory
    got = await store.get(ALICE, record.id, now_us())
    assert got is not None
    assert (got.text, got.metadata) == (UNICODE, metadata)
    assert (await add(store, memory(ALICE, UNICODE))).deduplicated
    history = await store.changes(ALICE, record.id, None, 1, 0)
    assert (history[0].new_text, history[0].new_metadata) == (UNICODE, metadata)


async def test_a_nul_in_text_is_refused_alike_on_both_backends(store: MemoryStore) -> None:
    with pytest.raises(InvalidArgument):
        await add(store, memory(ALICE, "before\x00after"))
