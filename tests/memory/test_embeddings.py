"""The retrieval layer: the local model (real all-MiniLM-L6-v2, offline) and the OpenAI embedder against a
real OpenAI-compatible HTTP server driven by the real openai client."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import threading
import time
import weakref
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
from tests.chroma_server import free_port
from tests.memory.vectors import cosine, norm

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
    first, second = LocalEmbedder(runtime="torch"), LocalEmbedder(runtime="torch")
    assert first.dimension == second.dimension == 0  # not loaded yet: lazily, on first use
    a, b = await asyncio.gather(first.embed_one("hello"), second.embed_one("hello"))
    assert loads == [str(default_model_path().resolve())]
    assert a == b
    assert first.dimension == second.dimension == 384
    third = LocalEmbedder(runtime="torch")  # the model is there already: its dimension is known at once
    assert third.dimension == 384
    await third.embed_one("again")
    assert len(loads) == 1


async def test_a_prefetched_text_is_embedded_once_and_ready_for_the_search(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An agent turn prefetches its message (embeddings.prefetch) before memory and knowledge search for
    it: the model runs once, and a search asking meanwhile waits for that run instead of starting one."""
    embedder = LocalEmbedder()
    await embedder.embed_one("a search on this loop")  # prefetch serves the embedders this loop uses
    runs: list[list[str]] = []
    real = embeddings._encode

    def counting(model: Any, texts: list[str]) -> list[list[float]]:
        runs.append(texts)
        return real(model, texts)

    monkeypatch.setattr(embeddings, "_encode", counting)
    # Only this test's embedder (others of earlier tests may still be alive in this process).
    monkeypatch.setattr(embeddings, "_live", weakref.WeakSet([embedder]))
    text = "What did we decide about the Berlin office move?"
    embeddings.prefetch(text)
    embeddings.prefetch(text)  # already under way: not started twice
    for _ in range(1000):  # the prefetch runs with nobody awaiting it
        if runs:
            break
        await asyncio.sleep(0.01)
    assert runs == [[text]]
    during = await embedder.embed_one(text)  # asked while the prefetch runs (or after): no new run
    after = await embedder.embed_one(text)
    assert runs == [[text]]
    assert during == after
    monkeypatch.setattr(embeddings, "_encode", real)
    assert cosine(during, (await LocalEmbedder().embed(["x", text]))[1]) > 0.9999


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
