"""The retrieval layer: the local model (real all-MiniLM-L6-v2, offline), the OpenAI embedder against a
real OpenAI-compatible HTTP server driven by the real openai client, the Chroma index embedded and on
a real Chroma server, and rank fusion."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sessionkit.errors import FailedPrecondition, InvalidArgument, ServiceUnavailable
from sessionkit_server.retrieval import embeddings
from sessionkit_server.retrieval.embeddings import (
    LocalEmbedder,
    OpenAIEmbedder,
    default_model_path,
    embedder_from_config,
)
from sessionkit_server.retrieval.fusion import (
    FusionWeights,
    best_rrf,
    fused_score,
    recency,
    rrf,
    rrf_normalized,
)
from sessionkit_server.retrieval.vector_index import (
    ChromaIndex,
    collection_name,
    index_from_url,
    partition,
    partition_prefix,
)
from tests.chroma_server import ChromaServer, chroma_server, free_port  # noqa: F401


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


# -- LocalEmbedder -------------------------------------------------------------------------------------


async def test_local_embedder_gives_384_dim_unit_vectors() -> None:
    embedder = LocalEmbedder()
    vectors = await embedder.embed(["The cat sat on the mat", "Quarterly revenue grew 8%"])
    assert embedder.name == "all-MiniLM-L6-v2"
    assert embedder.dimension == 384
    assert [len(v) for v in vectors] == [384, 384]
    assert all(abs(norm(v) - 1.0) < 1e-5 for v in vectors)
    assert all(isinstance(x, float) for x in vectors[0])
    assert await embedder.embed([]) == []
    await embedder.close()


async def test_similar_sentences_score_higher_than_unrelated_ones() -> None:
    embedder = LocalEmbedder()
    cat, rug, revenue = await embedder.embed(
        ["The cat sat on the mat", "A cat is sitting on a rug", "Quarterly revenue grew 8%"]
    )
    assert cosine(cat, rug) > cosine(cat, revenue) + 0.3
    assert cosine(cat, rug) > 0.5


async def test_local_batches_of_200_keep_order() -> None:
    embedder = LocalEmbedder()
    texts = [
        f"note {i}: the customer prefers {['email', 'phone', 'chat'][i % 3]} contact" for i in range(200)
    ]
    vectors = await embedder.embed(texts)
    assert len(vectors) == 200
    for i in (0, 63, 64, 137, 199):  # across batch boundaries
        alone = await embedder.embed_one(texts[i])
        assert cosine(vectors[i], alone) > 0.9999


async def test_local_embedding_does_not_block_the_event_loop() -> None:
    embedder = LocalEmbedder()
    await embedder.warm_up()
    ticks: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    vectors = await embedder.embed([f"sentence number {i} about the weather and travel" for i in range(500)])
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    assert len(vectors) == 500
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    # The ticker kept running all along: many ticks, and no long stall (one batch of 64 is ~0.15 s).
    assert len(ticks) >= max(5.0, elapsed / 0.01 / 4), (len(ticks), elapsed)
    assert max(gaps) < 0.25, max(gaps)


async def test_the_model_is_loaded_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import sentence_transformers

    loads: list[str] = []
    real = sentence_transformers.SentenceTransformer

    def counting(path: str, **kwargs: Any) -> Any:
        loads.append(path)
        return real(path, **kwargs)

    monkeypatch.setattr(embeddings, "_models", {})  # a fresh process cache (restored afterwards)
    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", counting)
    first, second = LocalEmbedder(), LocalEmbedder()
    assert first.dimension == second.dimension == 0  # not loaded yet: lazily, on first use
    a, b = await asyncio.gather(first.embed_one("hello"), second.embed_one("hello"))
    assert loads == [str(default_model_path().resolve())]
    assert a == b
    assert first.dimension == second.dimension == 384
    third = LocalEmbedder()  # the model is there already: its dimension is known at once
    assert third.dimension == 384
    await third.embed_one("again")
    assert len(loads) == 1


async def test_missing_model_files_fail_clearly(tmp_path: Path) -> None:
    missing = tmp_path / "no-model"
    with pytest.raises(FailedPrecondition) as caught:
        LocalEmbedder(missing)
    assert caught.value.reason == "EMBEDDING_MODEL_UNAVAILABLE"
    assert str(missing) in str(caught.value)

    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    embedder = LocalEmbedder(broken)  # files present: the load fails on first use
    with pytest.raises(FailedPrecondition) as caught:
        await embedder.embed_one("x")
    assert caught.value.reason == "EMBEDDING_MODEL_UNAVAILABLE"
    assert str(broken) in str(caught.value)


# -- OpenAIEmbedder against a real OpenAI-compatible server ----------------------------------------------


def fake_vector(text: str, dimension: int = 8) -> list[float]:
    """Deterministic and deliberately not unit-length (the embedder must normalize)."""
    digest = hashlib.sha256(text.encode()).digest()
    return [(digest[i] - 127.5) / 10 for i in range(dimension)]


class FakeOpenAI(ThreadingHTTPServer):
    """POST /v1/embeddings like OpenAI; ``fail`` holds statuses to answer to the next requests."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.batches: list[int] = []
        self.auth: list[str] = []
        self.fail: list[int] = []
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: FakeOpenAI

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/embeddings":
            self._answer(
                404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}}
            )
            return
        with self.server.lock:
            status = self.server.fail.pop(0) if self.server.fail else 200
            self.server.auth.append(self.headers.get("Authorization", ""))
            if status == 200:
                self.server.batches.append(len(request["input"]))
        if status != 200:
            kind = {400: "invalid_request_error", 429: "rate_limit_exceeded"}.get(status, "server_error")
            headers = {"Retry-After": "2"} if status == 429 else {}
            self._answer(status, {"error": {"message": f"fake failure {status}", "type": kind}}, headers)
            return
        assert request["encoding_format"] == "float"
        data = [
            {"object": "embedding", "index": i, "embedding": fake_vector(text)}
            for i, text in enumerate(request["input"])
        ]
        data.reverse()  # the order of `data` is not guaranteed: `index` is what counts
        self._answer(
            200,
            {
                "object": "list",
                "data": data,
                "model": request["model"],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            },
        )


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
async def openai_embedder(openai_server: FakeOpenAI) -> AsyncIterator[OpenAIEmbedder]:
    embedder = OpenAIEmbedder("fake-embed", base_url=openai_server.base_url, api_key="k", max_retries=0)
    yield embedder
    await embedder.close()


async def test_openai_vectors_are_normalized_and_in_order(
    openai_server: FakeOpenAI, openai_embedder: OpenAIEmbedder
) -> None:
    assert openai_embedder.dimension == 0
    vectors = await openai_embedder.embed(["alpha", "beta", "gamma"])
    assert openai_embedder.dimension == 8
    assert all(abs(norm(v) - 1.0) < 1e-9 for v in vectors)
    for text, vector in zip(["alpha", "beta", "gamma"], vectors, strict=True):
        raw = fake_vector(text)
        assert vector == pytest.approx([x / norm(raw) for x in raw])
    assert await openai_embedder.embed_one("beta") == vectors[1]
    assert openai_server.auth[0] == "Bearer k"


async def test_openai_batches_of_256(openai_server: FakeOpenAI, openai_embedder: OpenAIEmbedder) -> None:
    vectors = await openai_embedder.embed([f"text {i}" for i in range(600)])
    assert len(vectors) == 600
    assert openai_server.batches == [256, 256, 88]
    assert vectors[599] == pytest.approx([x / norm(fake_vector("text 599")) for x in fake_vector("text 599")])


@pytest.mark.parametrize(
    ("status", "error_class", "reason"),
    [
        (500, ServiceUnavailable, "EMBEDDING_UNAVAILABLE"),
        (503, ServiceUnavailable, "EMBEDDING_UNAVAILABLE"),
        (429, ServiceUnavailable, "EMBEDDING_UNAVAILABLE"),
        (400, InvalidArgument, "EMBEDDING_REJECTED"),
        (401, InvalidArgument, "EMBEDDING_REJECTED"),
    ],
)
async def test_openai_errors_are_mapped(
    openai_server: FakeOpenAI,
    openai_embedder: OpenAIEmbedder,
    status: int,
    error_class: type[Exception],
    reason: str,
) -> None:
    openai_server.fail = [status]
    with pytest.raises(error_class) as caught:
        await openai_embedder.embed(["x"])
    error = caught.value
    assert getattr(error, "reason", None) == reason
    assert openai_server.base_url in str(error) and "fake-embed" in str(error)
    assert f"fake failure {status}" in str(error)
    if status == 429:
        assert getattr(error, "retry_after", None) == 2.0
    assert await openai_embedder.embed(["x"])  # the next call works again


async def test_openai_retries_transient_errors_with_the_clients_backoff(openai_server: FakeOpenAI) -> None:
    embedder = OpenAIEmbedder("fake-embed", base_url=openai_server.base_url, api_key="k", max_retries=1)
    try:
        openai_server.fail = [503]
        assert len(await embedder.embed(["x"])) == 1
    finally:
        await embedder.close()


async def test_openai_unreachable_endpoint_is_unavailable() -> None:
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    embedder = OpenAIEmbedder("fake-embed", base_url=base_url, api_key="k", max_retries=0, timeout=5)
    try:
        with pytest.raises(ServiceUnavailable) as caught:
            await embedder.embed(["x"])
        assert base_url in str(caught.value) and caught.value.reason == "EMBEDDING_UNAVAILABLE"
        assert caught.value.metadata["base_url"].startswith(base_url)
    finally:
        await embedder.close()


async def test_embedder_from_config(openai_server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    local = embedder_from_config({})
    assert isinstance(local, LocalEmbedder) and local.name == "all-MiniLM-L6-v2"
    assert isinstance(embedder_from_config({"provider": "local", "dimension": 384}), LocalEmbedder)

    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    remote = embedder_from_config(
        {"provider": "openai", "model": "fake-embed", "base_url": openai_server.base_url, "dimension": "8"}
    )
    try:
        assert isinstance(remote, OpenAIEmbedder) and remote.dimension == 8
        assert len(await remote.embed_one("x")) == 8
        assert openai_server.auth == ["Bearer from-env"]
    finally:
        await remote.close()

    wrong_size = embedder_from_config(
        {"provider": "openai", "model": "m", "base_url": openai_server.base_url}
    )
    assert isinstance(wrong_size, OpenAIEmbedder)
    wrong_size.dimension = 16  # as if configured
    with pytest.raises(FailedPrecondition, match="8-dimensional"):
        await wrong_size.embed(["x"])
    await wrong_size.close()


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"modle": "x"}, "modle"),
        ({"provider": "cohere"}, "provider"),
        ({"provider": "openai"}, "model"),
        ({"provider": "openai", "model": "m", "base_url": "localhost:8080"}, "base_url"),
        ({"provider": "local", "base_url": "http://x"}, "base_url"),
        ({"dimension": 0}, "dimension"),
        ({"dimension": True}, "dimension"),
        ({"dimension": "many"}, "dimension"),
        ({"model": 3}, "model"),
    ],
)
def test_embedder_from_config_rejects_bad_configuration(config: dict[str, Any], key: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        embedder_from_config(config)
    assert key in str(caught.value)
    assert [v.field for v in caught.value.violations] == [key]


async def test_local_dimension_mismatch_is_a_failed_precondition() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        await embedder_from_config({"dimension": 100}).embed_one("x")
    assert caught.value.reason == "EMBEDDING_DIMENSION_MISMATCH"


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


# -- fusion ----------------------------------------------------------------------------------------------


def test_rrf_orders_by_summed_reciprocal_rank() -> None:
    fused = rrf([["a", "b", "c"], ["b", "a", "d"], ["b"]])
    assert list(fused) == ["b", "a", "c", "d"]
    assert fused["b"] == pytest.approx(1 / 62 + 1 / 61 + 1 / 61)
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["c"] == fused["d"] == pytest.approx(1 / 63)
    # Ties: the best single rank, then the id.
    assert list(rrf([["x", "y"], ["y", "x"]])) == ["x", "y"]
    assert list(rrf([["z", "q"], ["y"]])) == ["y", "z", "q"]
    # A repeated id counts once, at its first position; empty input gives nothing.
    assert rrf([["a", "a", "b"]]) == {"a": pytest.approx(1 / 61), "b": pytest.approx(1 / 63)}
    assert rrf([]) == {} and rrf([[], []]) == {}
    assert rrf([["a"]], k=0) == {"a": 1.0}


def test_normalized_rrf_and_the_final_score() -> None:
    assert best_rrf(2) == pytest.approx(2 / 61)
    normalized = rrf_normalized([["a", "b"], ["a", "c"]])
    assert normalized["a"] == pytest.approx(1.0)
    assert normalized["b"] == pytest.approx((1 / 62) / (2 / 61))
    assert recency(0, 30) == 1.0
    assert recency(30, 30) == pytest.approx(0.5)
    assert recency(60, 30) == pytest.approx(0.25)
    assert recency(-5, 30) == 1.0  # clock skew: never above 1
    assert fused_score(1.0, 1.0, 1.0) == pytest.approx(1.0)
    assert fused_score(0.8, 0.5, 0.25) == pytest.approx(0.75 * 0.8 + 0.15 * 0.5 + 0.10 * 0.25)
    assert fused_score(0.8, 0.5, 0.25, (1.0, 0.0, 0.0)) == pytest.approx(0.8)
    assert fused_score(
        0.8, 0.5, 0.25, FusionWeights(relevance=0.5, quality=0.5, recency=0.0)
    ) == pytest.approx(0.65)
    # A fresher, better item outranks an equally relevant stale one.
    assert fused_score(0.6, 0.9, recency(1, 30)) > fused_score(0.6, 0.9, recency(90, 30))


def test_weighted_rrf_discounts_a_ranking() -> None:
    # The memory service weights its lexical ranking 0.5: the item first by meaning (10th lexically)
    # then beats one 8th by meaning that is first lexically, which equal weights rank first.
    dense = ["answer"] + [f"d{n}" for n in range(6)] + ["keyword"]
    lexical = ["keyword"] + [f"l{n}" for n in range(8)] + ["answer"]
    equal = rrf_normalized([dense, lexical])
    weighted = rrf_normalized([dense, lexical], weights=[1.0, 0.5])
    assert next(iter(equal)) == "keyword"
    assert next(iter(weighted)) == "answer"
    assert weighted["answer"] == pytest.approx((1 / 61 + 0.5 / 70) / (1.5 / 61))
    assert rrf_normalized([["a"], ["a"]], weights=[1.0, 0.5])["a"] == pytest.approx(1.0)
    assert best_rrf(2, weights=[1.0, 0.5]) == pytest.approx(1.5 / 61)
    assert rrf([["a"], ["b"]], weights=[1.0, 0.0])["b"] == 0.0
    with pytest.raises(ValueError):
        rrf([["a"], ["b"]], weights=[1.0])
    with pytest.raises(ValueError):
        rrf([["a"]], weights=[-1.0])
