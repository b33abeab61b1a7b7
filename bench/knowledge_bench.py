"""Knowledge service benchmark: ingestion throughput against the embedding model's own throughput
measured in the same run, search latency at 10k and 100k chunks, and retrieval quality.

A ``sessionkit serve --service state --service knowledge`` runs in its own process on a temp data
directory (SQLite, embedded Chroma, all-MiniLM-L6-v2 on the CPU); this process is the client (the SDK's
``AsyncSession`` with ``address=``) and runs the model alone for the baselines (``LocalEmbedder``, the
class and batch size the server uses).

1. Ingestion. A generated markdown corpus (bench/knowledge_dataset.py; 50 MB in 10 files of 5 MB: a
   source holds at most 20,000 chunks) and a generated 300-page PDF (fpdf2) are uploaded with
   ``add_knowledge(path)`` one after the other, default chunker (recursive, 254 tokens). Reported: MB/s
   of source bytes and chunks/s. The denominator is the model alone embedding chunk texts of the same
   corpus in batches of 64 (its best throughput), timed before and after the ingestion (mean of the
   two, so drift on a shared machine hits both sides): ratio = ingestion chunks/s / model chunks/s.
2. Search latency: ``search_knowledge(query)`` (limit 5, the default scopes: session and user) as a user
   calls it, with 10k and 100k chunks in the searched session's scope (one scope holding everything:
   the worst case for one search). The chunks (about 120 words each) are seeded by a faster documented
   path with the server stopped: rows through ``KnowledgeStore.put`` (the same transaction as an
   ingestion: rows, FTS index, outbox), vectors embedded from each chunk's first 32 words (Chroma's
   query time depends on the number of vectors, not on the text they came from) and upserted into the
   scope's partition, the outbox entries marked done. Reported with the query embedding alone
   (``embed_one`` in this process), the part of a search that is the model.
3. Retrieval quality: bench/knowledge_quality.py (nDCG@10, recall@10: hybrid vs dense vs lexical).

``--quick`` (under about 3 minutes on a quiet 2-core machine): a 1 MB corpus in 2 files, a 30-page
PDF, 10k chunks only, 20 towns for quality. Full: ``.venv/bin/python bench/knowledge_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import numpy as np
from knowledge_dataset import chunk_texts, corpus, search_queries, write_pdf
from knowledge_quality import evaluate, report
from memory_common import ROOT, machine, percentile
from report import Recorder
from state_latency import free_port

from sessionkit import AsyncSession
from sessionkit_server.common.db import Database
from sessionkit_server.knowledge import chunking
from sessionkit_server.knowledge import tables as t
from sessionkit_server.knowledge.store import (
    ChunkRecord,
    KnowledgeStore,
    Scope,
    SourceRecord,
    vector_collection,
)
from sessionkit_server.retrieval.embeddings import LocalEmbedder
from sessionkit_server.retrieval.vector_index import ChromaIndex
from tests.servers import wait_serving

APP = "bench-knowledge"
USER = "reader"
SESSION = "s1"
SEED_SOURCE_CHUNKS = 1000


class KnowledgeServer:
    """``sessionkit serve --service state --service knowledge`` in a child process."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'sessionkit.db'}"

    def start(self, timeout: float = 600.0) -> KnowledgeServer:
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": f"{ROOT / 'sdk'}{os.pathsep}{ROOT}",
            "HF_HUB_OFFLINE": "1",
            "SESSIONKIT_DATA_DIR": str(self.data_dir),
            "SESSIONKIT_DATABASE_URL": self.database_url,
            "SESSIONKIT_LOG_LEVEL": "WARNING",
        }
        command = [sys.executable, "-m", "sessionkit.cli", "serve", "--port", str(port)]
        command += ["--service", "state", "--service", "knowledge", "--http-port", "0"]  # no gateway
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "server.log"
        with log.open("ab") as sink:
            self.proc = subprocess.Popen(command, env=env, stdout=sink, stderr=sink)
        self.address = f"127.0.0.1:{port}"
        try:
            wait_serving(self.address, timeout)
        except TimeoutError:
            tail = log.read_text(errors="replace")[-3000:]
            self.stop()
            raise RuntimeError(f"the server did not start; the end of its log:\n{tail}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


# -- 1. ingestion -----------------------------------------------------------------------------------


async def model_rate(embedder: LocalEmbedder, texts: list[str]) -> float:
    """Chunks per second of the model alone, batches of 64 (``embed`` batches internally)."""
    started = time.perf_counter()
    await embedder.embed(texts)
    return len(texts) / (time.perf_counter() - started)


async def ingest(session: AsyncSession, paths: list[Path]) -> tuple[float, int, int]:
    """Upload ``paths`` one by one: (seconds, bytes, chunks)."""
    started = time.perf_counter()
    size = chunks = 0
    for path in paths:
        result = await session.add_knowledge(str(path))
        size += result["source"]["size_bytes"]
        chunks += result["source"]["chunk_count"]
    return time.perf_counter() - started, size, chunks


async def ingestion(work: Path, corpus_mb: float, files: int, pdf_pages: int) -> list[str]:
    lines: list[str] = []
    text = corpus(int(corpus_mb * 1_000_000))
    step = len(text) // files
    # Cut at document starts, so no file begins mid-paragraph.
    cuts = [0, *(text.find("# A guide", (n + 1) * step) for n in range(files - 1)), len(text)]
    parts: list[Path] = []
    for n, (start, end) in enumerate(itertools.pairwise(cuts)):
        path = work / f"corpus-{n:02d}.md"
        path.write_text(text[start:end], encoding="utf-8")
        parts.append(path)
    pdf = write_pdf(work / "guides.pdf", pdf_pages)
    # The model's chunk texts: the default chunker's chunks of the corpus's first 300 KB.
    sample = [c.text for c in chunking.split(text[:300_000], chunking.chunker_config(0, 0, None))][:512]
    embedder = LocalEmbedder()
    await embedder.warm_up()
    before = await model_rate(embedder, sample)
    server = KnowledgeServer(work / "ingest").start()
    try:
        session = AsyncSession(SESSION, user_id=USER, app_name=APP, address=server.address, timeout=7200)
        await session.add_knowledge("warm-up: the server loads its model")
        md_seconds, md_bytes, md_chunks = await ingest(session, parts)
        pdf_seconds, pdf_bytes, pdf_chunks = await ingest(session, [pdf])
    finally:
        server.stop()
    after = await model_rate(embedder, sample)
    model = (before + after) / 2
    sample_bytes = sum(len(s.encode()) for s in sample) / len(sample)
    lines += [
        f"model alone (batches of 64, {len(sample)} corpus chunks of {sample_bytes:.0f} bytes on average): "
        f"{before:.1f} chunks/s before, {after:.1f} after, mean {model:.1f} chunks/s",
        "",
        "| source | size | chunks | seconds | MB/s | chunks/s | / model chunks/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, seconds, size, chunks in (
        (f"markdown corpus ({files} files)", md_seconds, md_bytes, md_chunks),
        (f"PDF, {pdf_pages} pages", pdf_seconds, pdf_bytes, pdf_chunks),
    ):
        rate = chunks / seconds
        RECORDER.value(f"ingest {label}", rate, n=1, unit="chunks/s", baseline="model alone, batches of 64",
                       baseline_median=model)  # fmt: skip
        lines.append(
            f"| {label} | {size / 1e6:.2f} MB | {chunks} | {seconds:.1f} | {size / 1e6 / seconds:.3f} | "
            f"{rate:.1f} | **{rate / model:.2f}x** |"
        )
    return lines


# -- 1b. many small files ---------------------------------------------------------------------------


def abstracts(count: int) -> list[str]:
    """``count`` abstract-sized documents (a title and about 240 words: two generated chunk texts)."""
    texts = chunk_texts(2 * count, seed=29)
    return [f"Abstract {n}\n\n{texts[2 * n]} {texts[2 * n + 1]}" for n in range(count)]


async def small_files(work: Path, count: int, batch: bool) -> list[str]:
    """``count`` abstracts, each its own file, added one ``add_knowledge(path)`` call at a time (and,
    with ``batch``, again as one ``add_knowledge(folder)`` into another session): chunks/s against the
    model alone embedding the same chunks in batches of 64, before and after (mean of the two)."""
    folder = work / "abstracts"
    folder.mkdir(parents=True, exist_ok=True)
    docs = abstracts(count)
    paths = []
    for n, doc in enumerate(docs):
        path = folder / f"abstract-{n:05d}.txt"
        path.write_text(doc, encoding="utf-8")
        paths.append(path)
    config = chunking.chunker_config(0, 0, None)
    sample = [c.text for doc in docs[:256] for c in chunking.split(doc, config)]
    embedder = LocalEmbedder()
    await embedder.warm_up()
    before = await model_rate(embedder, sample)
    server = KnowledgeServer(work / "small").start()
    rows: list[tuple[str, float, int]] = []
    try:
        session = AsyncSession(SESSION, user_id=USER, app_name=APP, address=server.address, timeout=7200)
        await session.add_knowledge("warm-up: the server loads its model")
        seconds, _, chunks = await ingest(session, paths)
        rows.append(("one `add_knowledge(path)` call per file", seconds, chunks))
        if batch:
            other = AsyncSession("s2", user_id=USER, app_name=APP, address=server.address, timeout=7200)
            started = time.perf_counter()
            results = await other.add_knowledge(folder)
            chunks = sum(r["source"]["chunk_count"] for r in results["results"])
            rows.append(("one `add_knowledge(folder)` call", time.perf_counter() - started, chunks))
    finally:
        server.stop()
    after = await model_rate(embedder, sample)
    model = (before + after) / 2
    lines = [
        f"{count} files of about 240 words; model alone (batches of 64, {len(sample)} of their chunks): "
        f"{before:.1f} chunks/s before, {after:.1f} after, mean {model:.1f}",
        "",
        "| how | files/s | chunks/s | / model chunks/s |",
        "|---|---|---|---|",
    ]
    for label, seconds, chunks in rows:
        rate = chunks / seconds
        lines.append(f"| {label} | {count / seconds:.1f} | {rate:.1f} | **{rate / model:.2f}x** |")
    return lines


# -- 2. search latency ------------------------------------------------------------------------------


def random_vectors(count: int, seed: int) -> list[list[float]]:
    """Unit vectors drawn uniformly (no cluster structure: the hardest case for Chroma's HNSW index)."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, 384))
    return cast(list[list[float]], (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).tolist())


async def seed(
    data_dir: Path, database_url: str, start: int, count: int, random: bool, per_source: int = 1000
) -> float:
    """Add chunks ``start`` .. ``start + count`` to the searched session's scope, the server stopped
    (see the module docstring), ``per_source`` chunks per source; ``random``: random unit vectors
    instead of the model's. Sources are put concurrently (SQLite's group commit shares their
    transactions) and their vectors upserted together. Returns the seconds it took."""
    started = time.perf_counter()
    db = Database(database_url)
    store = KnowledgeStore(db)
    await store.start()
    index = ChromaIndex.embedded(data_dir / "chroma")
    embedder = LocalEmbedder()
    scope = Scope(t.SESSION, USER, SESSION)
    texts = chunk_texts(start + count)[start:]
    coll = vector_collection(APP, scope)
    group = max(per_source, 2000)  # chunks per round of concurrent puts and one vector upsert
    for at in range(0, count, group):
        puts = []
        ids: list[str] = []
        metadatas: list[dict[str, str | int | float | bool]] = []
        for offset in range(at, min(at + group, count), per_source):
            batch = texts[offset : offset + per_source]
            now = time.time_ns() // 1000
            source_id = "ks-" + uuid.uuid4().hex
            name = f"seeded-{start + offset:06d}"
            record = SourceRecord(
                source_id, APP, scope, name, t.TEXT, USER, SESSION, "", "text/plain", "", uuid.uuid4().hex,
                sum(len(x) for x in batch), len(batch), {"strategy": 3}, {}, 1, now, now,
            )  # fmt: skip
            chunks = [
                ChunkRecord("kc-" + uuid.uuid4().hex, source_id, 1, APP, n, text, 0, 0, len(text))
                for n, text in enumerate(batch)
            ]
            puts.append(store.put(record, chunks))
            ids.extend(c.id for c in chunks)
            metadatas.extend({"bucket": scope.bucket, "source_id": source_id} for _ in chunks)
        await asyncio.gather(*puts)
        done = min(at + group, count)
        if random:
            vectors = random_vectors(len(ids), start + at)
        else:
            vectors = await embedder.embed([" ".join(text.split()[:32]) for text in texts[at:done]])
        await index.upsert(coll, ids, vectors, metadatas)
        while pending := await store.pending(2000):
            await store.done([entry.id for entry in pending])
        if done % 20000 == 0:
            print(f"  seeded {start + done:,} chunks ({time.perf_counter() - started:.0f} s)", flush=True)
    await index.close()
    await db.close()
    return time.perf_counter() - started


async def latency(
    server: KnowledgeServer,
    queries: list[str],
    embedder: LocalEmbedder,
    repeat: int,
    limit: int = 5,
    padding: int = 0,
) -> dict[str, float]:
    """Each query searched ``repeat`` times in a row; per query the fastest (on a machine shared
    with other work, the one least delayed by it) and the first are kept. Each try appends n spaces
    to the query: the same terms and vector, but not the embedder's cache of recent texts (which would
    make every try after the first skip the model)."""
    session = AsyncSession(SESSION, user_id=USER, app_name=APP, address=server.address)
    for query in queries[:10]:  # warm-up: connections, caches (padded: not a text measured below)
        await session.search_knowledge(query + " " * 99, limit)
    best: list[float] = []
    first: list[float] = []
    embeddings: list[float] = []
    for query in queries:
        times: list[float] = []
        for n in range(repeat):
            started = time.perf_counter()
            await session.search_knowledge(query + " " * (padding + n), limit)
            times.append((time.perf_counter() - started) * 1000)
        best.append(min(times))
        first.append(times[0])
        spent: list[float] = []
        for n in range(repeat):
            started = time.perf_counter()
            await embedder.embed_one(query + " " * (padding + n + repeat))  # not a text embedded before
            spent.append((time.perf_counter() - started) * 1000)
        embeddings.append(min(spent))
    return {
        "p50": statistics.median(best),
        "p99": percentile(best, 0.99),
        "first_p50": statistics.median(first),
        "embed_p50": statistics.median(embeddings),
    }


async def parts(data_dir: Path, database_url: str, queries: list[str], repeat: int) -> dict[str, float]:
    """The parts of a search timed alone on the stopped server's data, as the service calls them
    (k = 40): p50 ms of the best of ``repeat`` per query."""
    db = Database(database_url)
    store = KnowledgeStore(db)
    index = ChromaIndex.embedded(data_dir / "chroma")
    embedder = LocalEmbedder()
    scope = Scope(t.SESSION, USER, SESSION)
    coll = vector_collection(APP, scope)
    timings: dict[str, list[float]] = {"dense": [], "lexical": [], "rows": []}

    async def best(step: Callable[[], Awaitable[object]]) -> float:
        spent = []
        for _ in range(repeat):
            started = time.perf_counter()
            await step()
            spent.append((time.perf_counter() - started) * 1000)
        return min(spent)

    for query in queries:
        vector = await embedder.embed_one(query)
        dense = await index.query(coll, vector, 40)
        ids = [i for i, _ in dense]
        # Bound as defaults: each lambda runs (repeatedly) before the loop moves on.
        timings["dense"].append(await best(lambda v=vector: index.query(coll, v, 40)))  # type: ignore[misc]
        timings["lexical"].append(await best(lambda q=query: store.lexical(APP, [scope], q, 40)))  # type: ignore[misc]
        timings["rows"].append(await best(lambda i=ids: store.current_chunks(APP, [scope], i)))  # type: ignore[misc]
    await index.close()
    await db.close()
    return {name: statistics.median(values) for name, values in timings.items()}


RECORDER = Recorder("knowledge_bench")  # the figures for REPORT.md (bench/report.py)


async def search_latency(
    work: Path,
    sizes: list[int],
    queries: int,
    repeat: int,
    random_from: int,
    per_source: int = SEED_SOURCE_CHUNKS,
    limits: tuple[int, ...] = (5,),
    store: Path | None = None,
) -> list[str]:
    """Search latency at each size. ``store``: a data directory kept between runs (what it holds is
    recorded in its seeded.json; it is grown, never re-seeded, when the same shape asks for more)."""
    server = KnowledgeServer(store or work / "search")
    server.data_dir.mkdir(parents=True, exist_ok=True)
    marker = server.data_dir / "seeded.json"
    have = 0
    if marker.exists():
        seeded = json.loads(marker.read_text())
        if seeded["per_source"] != per_source or seeded["random_from"] != random_from:
            raise SystemExit(f"{server.data_dir} holds another shape ({seeded}): use another --store")
        have = seeded["chunks"]
    embedder = LocalEmbedder()
    await embedder.warm_up()
    asked = search_queries(queries)
    lines = [
        f"best of {repeat} per query; {per_source} chunks per source; vectors beyond {random_from:,} "
        "chunks are random unit vectors",
        "",
        "| chunks | sources | limit | search p50 | p99 | first try p50 | query embedding p50 | rest p50 "
        "| Chroma query | lexical | rows | seeded in |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        seconds = 0.0
        if have < min(size, random_from):
            model_part = min(size, random_from) - have
            seconds += await seed(server.data_dir, server.database_url, have, model_part, False, per_source)
            have += model_part
        if size > have:
            seconds += await seed(server.data_dir, server.database_url, have, size - have, True, per_source)
            have = size
        if have > size:
            print(f"  {server.data_dir} holds {have:,} chunks: measuring that, not {size:,}", flush=True)
        marker.write_text(json.dumps({"chunks": have, "per_source": per_source, "random_from": random_from}))
        sources = -(-have // per_source)
        server.start()
        try:
            # Each limit's queries padded further: no search hits the server's cache of recent
            # query embeddings (nor the baseline its own) because another limit embedded it.
            measured = [
                (limit, await latency(server, asked, embedder, repeat, limit, 2 * repeat * n))
                for n, limit in enumerate(limits)
            ]
        finally:
            server.stop()
        alone = await parts(server.data_dir, server.database_url, asked[:50], repeat)
        for limit, figures in measured:
            RECORDER.value(f"search_knowledge ({have} chunks, {sources} sources, limit {limit})",
                           figures["p50"], p99=figures["p99"], n=queries,
                           baseline="query embedding p50", baseline_median=figures["embed_p50"])  # fmt: skip
            lines.append(
                f"| {have:,} | {sources:,} | {limit} | **{figures['p50']:.1f}** | {figures['p99']:.1f} | "
                f"{figures['first_p50']:.1f} | {figures['embed_p50']:.1f} | "
                f"{figures['p50'] - figures['embed_p50']:.1f} | {alone['dense']:.1f} | "
                f"{alone['lexical']:.1f} | {alone['rows']:.1f} | {seconds:.0f} s |"
            )
            print(lines[-1], flush=True)
    return lines


async def main_async(args: argparse.Namespace) -> None:
    print(f"# knowledge benchmark ({'quick' if args.quick else 'full'}): {machine()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="sk-knowledge-bench-") as tmp:
        work = Path(tmp)
        if "ingest" in args.parts:
            started = time.perf_counter()
            lines = await ingestion(work, args.corpus_mb, args.files, args.pdf_pages)
            print("\n## Ingestion", *lines, f"({time.perf_counter() - started:.0f} s)", sep="\n", flush=True)
        if "small" in args.parts:
            started = time.perf_counter()
            lines = await small_files(work, args.small_files, args.small_batch)
            print(
                "\n## Many small files",
                *lines,
                f"({time.perf_counter() - started:.0f} s)",
                sep="\n",
                flush=True,
            )
        if "search" in args.parts:
            print("\n## Search latency (ms)", flush=True)
            started = time.perf_counter()
            await search_latency(
                work,
                args.sizes,
                args.queries,
                args.repeat,
                args.random_vectors_from,
                args.source_chunks,
                tuple(int(x) for x in args.limits.split(",")),
                args.store,
            )
            print(f"({time.perf_counter() - started:.0f} s)", flush=True)
        if "quality" in args.parts:
            started = time.perf_counter()
            results = await evaluate(args.towns)
            print(
                "\n## Retrieval quality",
                report(results),
                f"({time.perf_counter() - started:.0f} s)",
                sep="\n",
            )
    print(f"\n{machine()}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    parser.add_argument("--parts", default="ingest,small,search,quality", help="comma-separated parts to run")
    parser.add_argument("--corpus-mb", type=float, help="markdown corpus size (default 50; quick 1)")
    parser.add_argument("--files", type=int, help="files the corpus is split into (default 10; quick 2)")
    parser.add_argument("--pdf-pages", type=int, help="PDF pages (default 300; quick 30)")
    parser.add_argument("--sizes", help="chunk counts for the search latency (default 10000,100000)")
    parser.add_argument("--queries", type=int, help="search queries per size (default 300; quick 100)")
    parser.add_argument(
        "--small-files", type=int, help="files of the small-files part (default 1000; quick 200)"
    )
    parser.add_argument(
        "--small-batch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also add them as one folder",
    )
    parser.add_argument("--towns", type=int, help="quality set documents (default 60; quick 20)")
    parser.add_argument("--repeat", type=int, default=3, help="tries per search query (the best is kept)")
    parser.add_argument(
        "--random-vectors-from",
        type=int,
        default=10**9,
        help="seed random unit vectors instead of the model's beyond this many chunks (faster)",
    )
    parser.add_argument(
        "--source-chunks",
        type=int,
        default=SEED_SOURCE_CHUNKS,
        help="chunks per seeded source of the search part (10: 100k chunks from 10k files)",
    )
    parser.add_argument("--limits", default="5", help="search limits, comma-separated (e.g. 5,30)")
    parser.add_argument(
        "--store",
        type=Path,
        help="keep the search part's seeded data directory here and reuse it (seeded once)",
    )
    args = parser.parse_args()
    quick = args.quick
    args.parts = set(args.parts.split(","))
    args.corpus_mb = args.corpus_mb or (1.0 if quick else 50.0)
    args.files = args.files or (2 if quick else 10)
    args.pdf_pages = args.pdf_pages or (30 if quick else 300)
    args.sizes = [int(x) for x in (args.sizes or ("10000" if quick else "10000,100000")).split(",")]
    args.queries = args.queries or (100 if quick else 300)
    args.towns = args.towns or (20 if quick else 60)
    args.small_files = args.small_files or (200 if quick else 1000)
    RECORDER.variant = "quick" if quick else ""
    asyncio.run(main_async(args))
    RECORDER.save()


if __name__ == "__main__":
    main()
