"""The knowledge store's contract (sessionkit_server.knowledge.store.KnowledgeStore) on SQLite and
PostgreSQL: scopes (who sees which source), put/replace by name with versions, paging and order,
deletes, idempotent writes, lexical search over current chunks only, and text the backends store alike
(or, documented, do not)."""

from __future__ import annotations

import hashlib
import time
import uuid

import pytest

from sessionkit.errors import InvalidArgument
from sessionkit_server.common.db import Database
from sessionkit_server.common.idempotency import Idempotency, Replayed
from sessionkit_server.knowledge.records import ChunkRecord, Replaced, Scope, SourceRecord
from sessionkit_server.knowledge.store import KnowledgeStore
from sessionkit_server.knowledge.tables import COLLECTION, SESSION, TEXT, USER

APP = "app"
ALICE = Scope(USER, "alice", "")
ALICE_S1 = Scope(SESSION, "alice", "s1")
BOB = Scope(USER, "bob", "")
DOCS = Scope(COLLECTION, "", "docs")


def now_us() -> int:
    return time.time_ns() // 1000


def source(scope: Scope, name: str, content: str = "", app: str = APP) -> SourceRecord:
    t = now_us()
    digest = hashlib.sha256(content.encode()).hexdigest()
    return SourceRecord(
        f"src_{uuid.uuid4().hex[:20]}", app, scope, name, TEXT, scope.owner or "alice", "s1", "",
        "text/plain", name, digest, len(content.encode()), 0, {"size": 100}, {}, 0, t, t,
    )  # fmt: skip


def chunks(*texts: str, app: str = APP) -> list[ChunkRecord]:
    return [
        ChunkRecord(f"chk_{uuid.uuid4().hex[:20]}", "", 0, app, n, text, 0, 0, len(text), ["H1", "H2"])
        for n, text in enumerate(texts)
    ]


async def put(store: KnowledgeStore, scope: Scope, name: str, *texts: str, app: str = APP) -> Replaced:
    record = source(scope, name, "\n".join(texts), app)
    record.chunk_count = len(texts)
    return await store.put(record, chunks(*texts, app=app))


@pytest.fixture
async def store(database: Database) -> KnowledgeStore:
    store = KnowledgeStore(database)
    await store.start()
    return store


async def names(store: KnowledgeStore, scopes: list[Scope], app: str = APP) -> list[str]:
    return [s.name for s in await store.list_sources(app, scopes, 0, 0, 1000)]


# -- scopes -------------------------------------------------------------------------------------------


async def test_a_source_is_seen_only_through_its_scope_and_app(store: KnowledgeStore) -> None:
    mine = (await put(store, ALICE, "notes", "alice's secret recipe")).source
    await put(store, BOB, "notes", "bob's secret recipe")
    await put(store, DOCS, "manual", "the recipe manual")
    await put(store, ALICE, "elsewhere", "recipe in another app", app="other")
    assert await names(store, [ALICE]) == ["notes"]
    # Ordered by scope (kind: user before collection, then key), then name.
    assert await names(store, [DOCS, ALICE]) == ["notes", "manual"]
    assert await names(store, [ALICE_S1]) == []
    assert await names(store, [ALICE], app="other") == ["elsewhere"]
    assert await store.by_id(APP, mine.id, [BOB, DOCS]) is None
    assert await store.by_id("other", mine.id, [ALICE]) is None
    assert await store.by_id(APP, mine.id, [ALICE]) == mine
    assert await store.by_name(APP, BOB, "notes") != mine
    assert await store.delete(APP, mine.id, [BOB]) is None  # not visible: not deleted
    assert await store.by_id(APP, mine.id, [ALICE]) is not None
    hits = await store.lexical(APP, [BOB], "recipe", 10)
    found = await store.current_chunks(APP, [BOB], [chunk_id for chunk_id, _ in hits])
    assert [c.text for c, _ in found.values()] == ["bob's secret recipe"]


# -- put and replace ----------------------------------------------------------------------------------


async def test_put_by_name_replaces_the_content_keeping_id_and_create_time(store: KnowledgeStore) -> None:
    first = await put(store, ALICE, "notes", "old text about apples", "more apples")
    assert first.created and first.source.version == 1 and first.chunks_removed == 0
    old_ids = [c for c, _ in await store.lexical(APP, [ALICE], "apples", 10)]
    second = await put(store, ALICE, "notes", "new text about pears")
    assert not second.created and second.chunks_removed == 2
    assert (second.source.id, second.source.create_us) == (first.source.id, first.source.create_us)
    assert second.source.version == 2
    assert await store.current_chunks(APP, [ALICE], old_ids) == {}  # old chunks gone with their version
    assert await store.lexical(APP, [ALICE], "apples", 10) == []
    (hit,) = await store.lexical(APP, [ALICE], "pears", 10)
    chunk, owner = (await store.current_chunks(APP, [ALICE], [hit[0]]))[hit[0]]
    assert (chunk.version, chunk.heading_path, owner.id) == (2, ["H1", "H2"], first.source.id)
    assert await names(store, [ALICE]) == ["notes"]


async def test_putting_the_same_content_again_changes_nothing_unless_forced(store: KnowledgeStore) -> None:
    first = (await put(store, ALICE, "notes", "same text")).source
    record = source(ALICE, "notes", "same text")
    again = await store.put(record, chunks("same text"))
    assert again.unchanged and again.source.version == 1 and again.source.id == first.id
    forced = await store.put(source(ALICE, "notes", "same text"), chunks("same text"), force=True)
    assert not forced.unchanged and forced.source.version == 2 and forced.chunks_removed == 1


async def test_the_same_name_in_another_scope_is_another_source(store: KnowledgeStore) -> None:
    a = (await put(store, ALICE, "notes", "a")).source
    b = (await put(store, ALICE_S1, "notes", "b")).source
    c = (await put(store, DOCS, "notes", "c")).source
    assert len({a.id, b.id, c.id}) == 3


# -- paging -------------------------------------------------------------------------------------------


async def test_list_sources_pages_in_a_stable_order_and_filters_by_kind(store: KnowledgeStore) -> None:
    for n in (3, 1, 4, 0, 2):
        await put(store, ALICE, f"doc-{n}", f"text {n}")
    pages = [await store.list_sources(APP, [ALICE], 0, offset, 2) for offset in (0, 2, 4, 6)]
    assert [[s.name for s in page] for page in pages] == [
        ["doc-0", "doc-1"],
        ["doc-2", "doc-3"],
        ["doc-4"],
        [],
    ]
    assert len(await store.list_sources(APP, [ALICE], TEXT, 0, 10)) == 5
    assert await store.list_sources(APP, [ALICE], TEXT + 1, 0, 10) == []


# -- deletes ------------------------------------------------------------------------------------------


async def test_delete_and_clear_remove_sources_and_their_chunks(store: KnowledgeStore) -> None:
    one = (await put(store, ALICE, "one", "first chunk", "second chunk")).source
    await put(store, ALICE, "two", "third chunk")
    await put(store, DOCS, "kept", "kept chunk")
    assert await store.delete(APP, one.id, [ALICE]) == 2
    assert await store.delete(APP, one.id, [ALICE]) is None
    assert await store.by_name(APP, ALICE, "one") is None
    assert await store.clear(APP, ALICE) == (1, 1)
    assert await store.clear(APP, ALICE) == (0, 0)
    assert await names(store, [ALICE, DOCS]) == ["kept"]
    assert [c for c, _ in await store.lexical(APP, [ALICE], "chunk", 10)] == []
    assert len(await store.lexical(APP, [DOCS], "chunk", 10)) == 1


# -- idempotent writes --------------------------------------------------------------------------------


async def test_writes_with_a_key_apply_once_per_user(store: KnowledgeStore) -> None:
    idem: Idempotency[Replaced] = Idempotency("k1", "AddSource", lambda r: r.source.id.encode())
    first = await store.put(source(ALICE, "notes", "a"), chunks("a"), idem=idem, user_id="alice")
    with pytest.raises(Replayed) as replay:
        await store.put(source(ALICE, "other", "b"), chunks("b"), idem=idem, user_id="alice")
    assert replay.value.response == first.source.id.encode()
    assert await names(store, [ALICE]) == ["notes"]
    await store.put(source(BOB, "other", "b"), chunks("b"), idem=idem, user_id="bob")  # bob's key space
    delete_key: Idempotency[int | None] = Idempotency("d1", "DeleteSource", lambda n: str(n).encode())
    assert await store.delete(APP, first.source.id, [ALICE], delete_key, "alice") == 1
    with pytest.raises(Replayed) as again:
        await store.delete(APP, first.source.id, [ALICE], delete_key, "alice")
    assert again.value.response == b"1"


async def test_a_failed_put_leaves_nothing(store: KnowledgeStore) -> None:
    record = source(ALICE, "notes", "x")
    duplicated = chunks("one", "two")
    duplicated[1].id = duplicated[0].id  # the chunk ids are unique: the insert fails
    with pytest.raises(Exception):  # noqa: B017 - the database's own integrity error
        await store.put(record, duplicated)
    assert await names(store, [ALICE]) == []
    assert await store.pending() == []


# -- lexical search -----------------------------------------------------------------------------------


async def test_lexical_search_ranks_and_limits(store: KnowledgeStore) -> None:
    await put(store, ALICE, "a", "green tea is a drink", "tea tea tea: tea all day", "bicycles are fast")
    hits = await store.lexical(APP, [ALICE], "tea", 10)
    assert len(hits) == 2
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert len(await store.lexical(APP, [ALICE], "tea", 1)) == 1
    assert await store.lexical(APP, [ALICE], "the of and", 10) == []


# -- text on both backends ----------------------------------------------------------------------------

UNICODE = "naïve café ☕ 日本語のテキスト 🙂🏳️‍🌈 עִבְרִית e\u0301 \U0001f600 tab\tnewline\n end"


async def test_unicode_names_text_and_metadata_round_trip(store: KnowledgeStore) -> None:
    record = source(ALICE, "名前 🙂.txt", UNICODE)
    record.metadata = {"ключ": "значение", "nul": "a\x00b"}
    record.title = UNICODE
    put_chunks = chunks(UNICODE)
    put_chunks[0].heading_path = ["Überschrift", "見出し 🙂"]
    await store.put(record, put_chunks)
    got = await store.by_name(APP, ALICE, "名前 🙂.txt")
    assert got is not None and (got.title, got.metadata) == (UNICODE, record.metadata)
    found = await store.current_chunks(APP, [ALICE], [put_chunks[0].id])
    chunk, _ = found[put_chunks[0].id]
    assert (chunk.text, chunk.heading_path) == (UNICODE, ["Überschrift", "見出し 🙂"])


async def test_a_nul_in_chunk_text_is_refused_alike_on_both_backends(store: KnowledgeStore) -> None:
    with pytest.raises(InvalidArgument):
        await store.put(source(ALICE, "notes", "x"), chunks("before\x00after"))


# -- lexical ranking (BM25 on both backends) -----------------------------------------------------------


async def test_lexical_search_ranks_rare_words_and_short_chunks_first(store: KnowledgeStore) -> None:
    """BM25 on both backends: a chunk holding the query's rare word outranks one holding its common
    word twice (inverse document frequency), and of two chunks with the same matches the shorter
    ranks first (length normalisation)."""
    for n in range(5):
        await put(store, DOCS, f"memo {n}", f"protein folding assay number {n}")
    common = await put(store, DOCS, "common", "protein and more protein")
    rare = await put(store, DOCS, "rare", "the ribosome stalls")
    filler = " ".join(["measurements were repeated under several other conditions"] * 5)
    long = await put(store, DOCS, "long", f"kinase inhibitor {filler}")
    short = await put(store, DOCS, "short", "kinase inhibitor trial")
    await put(store, BOB, "bob", "ribosome ribosome ribosome")  # another scope: never returned

    async def ranked(query: str) -> list[str]:
        hits = await store.lexical(APP, [DOCS], query, 10)
        found = await store.current_chunks(APP, [DOCS], [c for c, _ in hits])
        return [found[c][1].name for c, _ in hits]

    assert (await ranked("protein ribosome"))[:2] == [rare.source.name, common.source.name]
    assert await ranked("kinase inhibitor") == [short.source.name, long.source.name]
    assert "bob" not in await ranked("ribosome")


async def test_lexical_statistics_are_those_of_the_searched_scopes(store: KnowledgeStore) -> None:
    """On PostgreSQL BM25's statistics are summed over the searched scopes' sources (migration k0005):
    another scope's chunks, added, replaced or deleted, leave a ranking's scores as they were. SQLite's
    FTS5 keeps one set of statistics for the whole table (docs/KNOWLEDGE.md)."""
    if not store.db.is_postgres:
        pytest.skip("FTS5's bm25 statistics cover every scope's chunks (docs/KNOWLEDGE.md)")
    await put(store, ALICE, "a", "the ribosome stalls on the mRNA")
    await put(store, ALICE, "b", "mRNA decay")
    before = await store.lexical(APP, [ALICE], "ribosome mRNA", 10)
    for n in range(10):
        await put(store, BOB, f"bob {n}", f"ribosome mRNA {n} " + "filler " * n)
    assert await store.lexical(APP, [ALICE], "ribosome mRNA", 10) == before and len(before) == 2
    replaced = await put(store, ALICE, "b", "mRNA decay and ribosome")  # a new version counts, the old not
    again = await store.lexical(APP, [ALICE], "ribosome mRNA", 10)
    assert replaced.source.version == 2 and len(again) == 2 and again != before
    await store.clear(APP, BOB)
    assert await store.lexical(APP, [ALICE], "ribosome mRNA", 10) == again


async def test_lexical_search_finds_a_scopes_matches_behind_many_of_another_scope(
    store: KnowledgeStore,
) -> None:
    """SQLite ranks every scope's chunks together and fetches 2 x k candidates first: when fewer than
    k of them are visible it looks further (8 x k), so bob's better matches do not hide alice's."""
    await put(store, BOB, "bobs", *[f"zebra zebra zebra stripes number {n}" for n in range(25)])
    await put(store, ALICE, "alices", "a zebra among many other words about a long day at the zoo")
    (hit,) = await store.lexical(APP, [ALICE], "zebra", 5)  # 25 of bob's rank first: > 2 x 5
    ((chunk, source),) = (await store.current_chunks(APP, [ALICE], [hit[0]])).values()
    assert source.name == "alices" and "zoo" in chunk.text
    assert len(await store.lexical(APP, [BOB], "zebra", 5)) == 5  # enough among the first candidates
    assert len(await store.lexical(APP, [ALICE, BOB], "zebra", 30)) == 26
