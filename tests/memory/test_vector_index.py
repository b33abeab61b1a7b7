"""The retrieval layer: the Chroma index, embedded and on a real Chroma server."""

from __future__ import annotations

import asyncio
import math
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from sessionkit.errors import InvalidArgument, ServiceUnavailable
from sessionkit_server.retrieval.vector_index import (
    ChromaIndex,
    collection_name,
    index_from_url,
    partition,
    partition_prefix,
)
from tests.chroma_server import ChromaServer, chroma_server, free_port  # noqa: F401
from tests.memory.vectors import cosine

# -- ChromaIndex, embedded and on a real Chroma server ---------------------------------------------------


@pytest.fixture(params=["embedded", "server"])
def index_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Makes ChromaIndex instances over the same storage (closed at the end)."""
    made: list[ChromaIndex] = []
    url: str = request.getfixturevalue("chroma_server") if request.param == "server" else ""

    def make() -> ChromaIndex:
        index = index_from_url(url, tmp_path)
        assert isinstance(index, ChromaIndex)
        made.append(index)
        return index

    yield make
    for index in made:
        asyncio.run(index.close())


@pytest.fixture
async def index(index_factory: Any) -> AsyncIterator[ChromaIndex]:
    made: ChromaIndex = index_factory()
    yield made
    await made.close()


def unique(prefix: str = "memories") -> str:
    return f"{prefix}:{uuid.uuid4().hex[:8]}"


def unit(*xs: float) -> list[float]:
    length = math.sqrt(sum(x * x for x in xs))
    return [x / length for x in xs]


async def test_upsert_and_query_rank_by_cosine(index: ChromaIndex) -> None:
    coll = unique()
    await index.upsert(
        coll,
        ["same", "close", "orthogonal", "opposite"],
        [unit(1, 0, 0), unit(1, 0.3, 0), unit(0, 1, 0), unit(-1, 0, 0)],
        [{"user_id": "u", "n": 1}, {"user_id": "u", "n": 2}, {"user_id": "u", "n": 3}, {"user_id": "u"}],
    )
    hits = await index.query(coll, unit(1, 0, 0), 10)
    assert [i for i, _ in hits] == ["same", "close", "orthogonal", "opposite"]
    scores = dict(hits)
    assert scores["same"] == pytest.approx(1.0, abs=1e-5)
    assert scores["close"] == pytest.approx(1 / math.sqrt(1.09), abs=1e-5)
    assert scores["orthogonal"] == pytest.approx(0.0, abs=1e-5)
    assert scores["opposite"] == pytest.approx(-1.0, abs=1e-5)
    assert all(-1.0 <= s <= 1.0 for _, s in hits)
    assert [i for i, _ in await index.query(coll, unit(1, 0, 0), 2)] == ["same", "close"]
    assert await index.query(coll, unit(1, 0, 0), 0) == []
    # An upsert replaces the vector and the metadata.
    await index.upsert(coll, ["opposite"], [unit(1, 0.01, 0)], [{"user_id": "v"}])
    assert (await index.query(coll, unit(1, 0, 0), 2))[1][0] == "opposite"
    assert await index.ids(coll, {"user_id": "v"}) == {"opposite"}


async def test_where_filters_isolate_users(index: ChromaIndex) -> None:
    coll = unique()
    ids = [
        f"{user}-{kind}-{n}" for user in ("acme", "acme-corp") for kind in ("long", "short") for n in range(3)
    ]
    metadatas: list[dict[str, str | int | float | bool]] = [
        {"user_id": i.rsplit("-", 2)[0], "memory_type": i.rsplit("-", 2)[1]} for i in ids
    ]
    vectors = [unit(1, 0.1 * n, 0.05 * n) for n in range(len(ids))]
    await index.upsert(coll, ids, vectors, metadatas)

    acme = await index.query(coll, unit(1, 0, 0), 50, {"user_id": "acme"})
    assert {i for i, _ in acme} == {i for i in ids if i.startswith("acme-long") or i.startswith("acme-short")}
    corp = await index.query(coll, unit(1, 0, 0), 50, {"user_id": "acme-corp"})
    assert {i for i, _ in corp} == {i for i in ids if i.startswith("acme-corp-")}

    both = {"$and": [{"user_id": "acme"}, {"memory_type": "long"}]}
    acme_long = {f"acme-long-{n}" for n in range(3)}
    assert {i for i, _ in await index.query(coll, unit(1, 0, 0), 50, both)} == acme_long
    assert await index.ids(coll, both) == acme_long
    # Conveniences: several fields in one dict mean all of them; a one-clause $and is that clause.
    assert await index.ids(coll, {"user_id": "acme", "memory_type": "long"}) == acme_long
    assert await index.ids(coll, {"$and": [{"user_id": "acme-corp"}]}) == {i for i in ids if "corp" in i}
    in_list = {"$and": [{"user_id": "acme"}, {"memory_type": {"$in": ["short", "other"]}}]}
    assert await index.ids(coll, in_list) == {f"acme-short-{n}" for n in range(3)}
    assert await index.query(coll, unit(1, 0, 0), 5, {"user_id": "nobody"}) == []


async def test_delete_delete_where_and_ids(index: ChromaIndex) -> None:
    coll = unique()
    ids = [f"m{n}" for n in range(6)]
    await index.upsert(
        coll, ids, [unit(1, n, 0) for n in range(6)], [{"user_id": "a" if n < 3 else "b"} for n in range(6)]
    )
    assert await index.ids(coll) == set(ids)
    await index.delete(coll, ["m0", "missing-id"])
    assert await index.ids(coll) == set(ids) - {"m0"}
    await index.delete_where(coll, {"user_id": "b"})
    assert await index.ids(coll) == {"m1", "m2"}
    assert {i for i, _ in await index.query(coll, unit(1, 0, 0), 10)} == {"m1", "m2"}
    await index.delete(coll, [])
    with pytest.raises(ValueError, match="filter"):
        await index.delete_where(coll, {})


async def test_missing_collection_and_drop(index: ChromaIndex) -> None:
    missing = unique("never-created")
    assert await index.query(missing, unit(1, 0), 5) == []
    assert await index.ids(missing) == set()
    await index.delete(missing, ["x"])
    await index.delete_where(missing, {"user_id": "x"})
    await index.drop(missing)

    coll = unique()
    await index.upsert(coll, ["a"], [unit(1, 0)], [{"user_id": "u"}])
    await index.drop(coll)
    assert await index.query(coll, unit(1, 0), 5) == []
    assert await index.ids(coll) == set()
    await index.upsert(coll, ["b"], [unit(0, 1, 0)], [{}])  # recreated, any dimension; empty metadata ok
    assert await index.query(coll, unit(0, 1, 0), 5) == [("b", pytest.approx(1.0, abs=1e-5))]


async def test_a_collection_dropped_by_another_client_is_recreated(index_factory: Any) -> None:
    first: ChromaIndex = index_factory()
    second: ChromaIndex = index_factory()
    coll = unique()
    await first.upsert(coll, ["a"], [unit(1, 0)], [{"user_id": "u"}])
    assert await first.ids(coll) == {"a"}  # first now holds the collection
    await second.drop(coll)
    assert await first.ids(coll) == set()
    assert await first.query(coll, unit(1, 0), 3) == []
    await first.upsert(coll, ["b"], [unit(1, 0)], [{"user_id": "u"}])
    assert await second.ids(coll) == {"b"}


async def test_logical_names_map_to_distinct_valid_chroma_names(index: ChromaIndex) -> None:
    names = ["a", "a:b", "a-b", "a_b", "memories:app.with..dots", "é", "1.2.3.4", "x" * 600, " spaced out "]
    chroma_names = {collection_name(n) for n in names}
    assert len(chroma_names) == len(names)
    assert collection_name("a:b") == collection_name("a:b")
    for n, name in enumerate(names):
        await index.upsert(name, [f"id{n}"], [unit(1, n)], [{"n": n}])
    for n, name in enumerate(names):
        assert await index.ids(name) == {f"id{n}"}
    for name in names:
        await index.drop(name)


async def test_large_upserts_are_split_into_chromas_batches(index: ChromaIndex) -> None:
    coll = unique()
    count = 6000  # over chromadb's max batch size (5461 here)
    ids = [f"i{n}" for n in range(count)]
    await index.upsert(
        coll, ids, [unit(1, n % 97, n % 13) for n in range(count)], [{"k": n % 5} for n in range(count)]
    )
    assert len(await index.ids(coll)) == count
    await index.delete(coll, ids)
    assert await index.ids(coll) == set()
    await index.drop(coll)


async def test_embedded_data_persists_across_instances(tmp_path: Path) -> None:
    first = index_from_url("", tmp_path)
    assert isinstance(first, ChromaIndex) and str(tmp_path / "chroma") in first.location
    await first.upsert(
        "memories:app", ["a", "b"], [unit(1, 0), unit(0, 1)], [{"user_id": "u"}, {"user_id": "v"}]
    )
    await first.close()
    await first.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await first.ids("memories:app")

    second = index_from_url("embedded", tmp_path)
    try:
        assert await second.ids("memories:app") == {"a", "b"}
        assert (await second.query("memories:app", unit(1, 0), 1, {"user_id": "u"}))[0][0] == "a"
    finally:
        await second.close()


async def test_server_down_is_service_unavailable() -> None:
    port = free_port()
    index = ChromaIndex.server("127.0.0.1", port)
    try:
        with pytest.raises(ServiceUnavailable) as caught:
            await index.query("memories:app", unit(1, 0), 3)
        assert f"127.0.0.1:{port}" in str(caught.value)
        assert caught.value.reason == "VECTOR_INDEX_UNAVAILABLE"
        with pytest.raises(ServiceUnavailable):
            await index.upsert("memories:app", ["a"], [unit(1, 0)], [{"user_id": "u"}])
    finally:
        await index.close()


async def test_a_hung_server_times_out() -> None:
    """A server that accepts connections but never answers must not hang the index forever."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # never accepted: the kernel completes handshakes, nobody answers
        port = listener.getsockname()[1]
        index = ChromaIndex.server("127.0.0.1", port, timeout=0.5)
        try:
            started = time.monotonic()
            with pytest.raises(ServiceUnavailable, match=f"127.0.0.1:{port}"):
                await index.ids("memories:app")
            assert time.monotonic() - started < 5
        finally:
            await index.close()


async def test_server_going_down_and_coming_back(tmp_path: Path) -> None:
    server = ChromaServer(tmp_path / "srv").start()
    index = ChromaIndex.server(server.host, server.port)
    try:
        await index.upsert("memories:app", ["a"], [unit(1, 0)], [{"user_id": "u"}])
        await asyncio.to_thread(server.stop)
        with pytest.raises(ServiceUnavailable) as caught:
            await index.ids("memories:app")
        assert f"{server.host}:{server.port}" in str(caught.value)
        server = await asyncio.to_thread(ChromaServer(server.path, server.port).start)
        assert await index.ids("memories:app") == {"a"}  # same data directory, same client
    finally:
        await index.close()
        await asyncio.to_thread(server.stop)


def test_index_from_url() -> None:
    server = index_from_url("http://chroma.internal:8123", Path("/unused"))
    assert isinstance(server, ChromaIndex) and "chroma.internal:8123" in server.location
    default_port = index_from_url("http://chroma.internal", Path("/unused"))
    assert isinstance(default_port, ChromaIndex) and "chroma.internal:8000" in default_port.location
    for bad in ("ftp://host:1", "chroma:8000", "http://host:99999", "http://host:1/path"):
        with pytest.raises(InvalidArgument) as caught:
            index_from_url(bad, Path("/unused"))
        assert caught.value.violations[0].field == "vector_url"


async def test_partitions_are_separate_collections_found_by_prefix(index: ChromaIndex) -> None:
    base = unique()
    alice, bob = partition(base, "alice", "long"), partition(base, "bob", "long")
    await index.upsert(alice, ["a1", "a2"], [unit(1, 0), unit(0, 1)], [{"n": 1}, {"n": 2}])
    await index.upsert(bob, ["b1"], [unit(1, 0)], [{}])
    # A query of one partition sees only its vectors, with no filter.
    assert [i for i, _ in await index.query(alice, unit(1, 0), 10)] == ["a1", "a2"]
    assert [i for i, _ in await index.query(bob, unit(1, 0), 10)] == ["b1"]
    # Key tuples that would read alike never share a partition.
    assert len({partition(base, "a/b", "c"), partition(base, "a", "b/c"), partition(base, "a/b/c")}) == 3
    assert partition(base, "u") != partition(base + "/u")
    assert await index.collections(partition_prefix(base)) == sorted([alice, bob])
    assert await index.collections(partition_prefix(base, "alice")) == [alice]
    assert await index.exists(alice) and not await index.exists(partition(base, "carol", "long"))
    # Reads never create a partition.
    assert await index.query(partition(base, "carol", "long"), unit(1, 0), 3) == []
    assert not await index.exists(partition(base, "carol", "long"))
    await index.drop(alice)
    assert await index.collections(partition_prefix(base)) == [bob]


async def test_query_many_answers_each_vector_in_order(index: ChromaIndex) -> None:
    coll = unique()
    await index.upsert(coll, ["x", "y"], [unit(1, 0, 0), unit(0, 1, 0)], [{}, {}])
    found = await index.query_many(coll, [unit(0, 1, 0), unit(1, 0.1, 0), unit(0, 0, 1)], 1)
    assert [[i for i, _ in hits] for hits in found] == [["y"], ["x"], [found[2][0][0]]]
    assert found[0][0][1] == pytest.approx(1.0, abs=1e-5)
    assert await index.query_many(unique(), [unit(1, 0, 0)], 1) == [[]]  # a missing collection
    assert await index.query_many(coll, [], 1) == []


async def test_entries_page_through_a_collection(index: ChromaIndex) -> None:
    coll = unique()
    ids = [f"id{n:02d}" for n in range(25)]
    await index.upsert(coll, ids, [unit(1, n) for n in range(25)], [{"n": n} for n in range(25)])
    seen = []
    for offset in range(0, 30, 10):
        seen.extend(await index.entries(coll, offset, 10))
    assert sorted(e.id for e in seen) == ids
    by_id = {e.id: e for e in seen}
    assert by_id["id07"].metadata == {"n": 7}
    assert cosine(by_id["id07"].vector, unit(1, 7)) == pytest.approx(1.0, abs=1e-5)
    assert await index.entries(unique(), 0, 10) == []


async def test_a_core_fault_is_retried_once_then_unavailable(
    index: ChromaIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chroma's core can raise InternalError (e.g. a segment reader it could not open). It cannot be
    provoked on demand, so Collection.upsert is made to fail here: one fault is retried on a fresh
    handle, two are a retryable ServiceUnavailable, never a 500."""
    from chromadb.api.models.Collection import Collection
    from chromadb.errors import InternalError

    coll = unique()
    await index.upsert(coll, ["a"], [unit(1, 0, 0)], [{"user": "u"}])
    real = Collection.upsert
    faults = {"left": 1}

    def flaky(self: Any, *args: Any, **kwargs: Any) -> Any:
        if faults["left"] > 0:
            faults["left"] -= 1
            raise InternalError("Error creating hnsw segment reader")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Collection, "upsert", flaky)
    await index.upsert(coll, ["b"], [unit(0, 1, 0)], [{"user": "u"}])
    assert await index.ids(coll) == {"a", "b"}

    faults["left"] = 2
    with pytest.raises(ServiceUnavailable) as raised:
        await index.upsert(coll, ["c"], [unit(0, 0, 1)], [{"user": "u"}])
    assert raised.value.reason == "VECTOR_INDEX_UNAVAILABLE"
    assert await index.ids(coll) == {"a", "b"}
