"""The cost of query expansion (SESSIONKIT_SEARCH_QUERY_EXPANSION, sessionkit_server.retrieval.
expansion) per memory search: latency added and LLM calls, with a scripted LLM that answers at once,
so what is measured is the service's own work (the LLM round trip over local HTTP with the real
``openai`` client, parsing, and searching each rewritten query: its embedding, dense and lexical
searches, and the larger fusion). A real model adds its own answer time on top (typically hundreds of
milliseconds: more than the whole search without expansion); its quality is not measured here (no
model runs on the project's machines).

The memory service runs in this process (SQLite, embedded Chroma, the packaged all-MiniLM-L6-v2, as
the embedded server) over ``--memories`` memories of one user (bench/memory_dataset.py's texts, added
with ``add_many``); each of bench/memory_dataset.py's questions is searched with expansion off and on,
alternating, so machine noise hits both alike. The scripted model answers three queries (two
rewordings and a hypothetical answer, the prompt's maximum) made from the question's words.

Run: ``flock /tmp/bench.lock .venv/bin/python bench/query_expansion_bench.py [--memories 1000]
[--searches 100]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "sdk"), str(ROOT)]

from memory_dataset import scale_queries, scale_texts  # noqa: E402

from sessionkit_server.common.db import Database  # noqa: E402
from sessionkit_server.common.identity import Owner  # noqa: E402
from sessionkit_server.memory.base import NewMemory  # noqa: E402
from sessionkit_server.memory.service import MemoryService  # noqa: E402
from sessionkit_server.memory.store import MemoryStore  # noqa: E402
from sessionkit_server.retrieval.embeddings import embedder_from_config  # noqa: E402
from sessionkit_server.retrieval.expansion import QueryExpander  # noqa: E402
from sessionkit_server.retrieval.vector_index import index_from_url  # noqa: E402
from tests.llm_server import LLMServer  # noqa: E402

OWNER = Owner("qxbench", "user", "session")


def rewordings(question: str) -> str:
    words = [w.strip("?.,'") for w in question.split() if len(w) > 3]
    return json.dumps(
        {
            "queries": [
                " ".join(words),
                " ".join(reversed(words)) + " details",
                f"The answer to {question.rstrip('?')} is noted here.",
            ]
        }
    )


async def run(memories: int, searches: int) -> None:
    llm = LLMServer().start()
    with tempfile.TemporaryDirectory(prefix="sk-qx-") as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'sessionkit.db'}")
        service = MemoryService(
            MemoryStore(db), index_from_url("", Path(tmp)), embedder_from_config({"provider": "local"})
        )
        await service.start()
        expander = QueryExpander("test-model", base_url=llm.base_url, api_key="k", timeout=5)
        try:
            texts = itertools.islice(scale_texts(), memories)
            for batch in iter(lambda: list(itertools.islice(texts, 256)), []):
                await service.add_many(OWNER, [NewMemory(text) for text in batch])
            questions = scale_queries(searches)
            for q in questions[:10]:  # warm: model, index, connections
                await service.search(OWNER, q, limit=5)
            off: list[float] = []
            on: list[float] = []
            for q in questions:
                service.expander = None
                start = time.perf_counter()
                await service.search(OWNER, q, limit=5)
                off.append(1000 * (time.perf_counter() - start))
                llm.reply(rewordings(q))
                service.expander = expander
                start = time.perf_counter()
                await service.search(OWNER, q, limit=5)
                on.append(1000 * (time.perf_counter() - start))
            calls = len(llm.chat_requests)
            p50_off, p50_on = statistics.median(off), statistics.median(on)
            print(f"memories {memories}, searches {len(questions)} each way (limit 5)")
            print("| expansion | p50 ms | p95 ms | LLM calls per search |\n|---|---|---|---|")
            for name, values, per in (
                ("off", off, 0.0),
                ("on (scripted LLM, 3 queries)", on, calls / len(on)),
            ):
                ordered = sorted(values)
                print(
                    f"| {name} | {statistics.median(values):.1f} | "
                    f"{ordered[int(0.95 * len(ordered))]:.1f} | {per:.2f} |"
                )
            print(f"ratio on / off p50: {p50_on / p50_off:.2f}; added p50 {p50_on - p50_off:.1f} ms")
        finally:
            service.expander = None
            await expander.close()
            await service.close()
            await db.close()
            llm.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memories", type=int, default=1000)
    parser.add_argument("--searches", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(run(args.memories, args.searches))


if __name__ == "__main__":
    main()
