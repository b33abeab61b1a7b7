"""Retrieval quality of knowledge search: nDCG@10 and recall@10 of hybrid (what SearchKnowledge
returns), dense only (the Chroma ranking) and lexical only (the FTS5 / tsvector ranking), on the
generated evaluation set of bench/knowledge_dataset.py.

The set: N fictional towns, one markdown document each, six sections (landmarks, economy, festivals,
transport, cuisine, history); each section states one fact among 3-5 filler sentences about the same
town. Every town has the same six kinds of fact with other values, so a question must match both the
town and the topic. Each fact has two questions: "lexical" reuses the fact's key words ("Who built the
clock tower in Debeve?"), "paraphrase" says it in other words ("Which designer is behind the big
timepiece landmark of Debeve?"). A chunk is relevant when it contains the fact sentence (binary
relevance; with the default chunker a fact is in exactly one chunk). The documents are ingested with
the service's default chunker (recursive, 254 tokens) through ``KnowledgeService.add_text``, in this
process (SQLite and embedded Chroma in a temp directory, the packaged all-MiniLM-L6-v2): quality does
not depend on the transport.

Run: ``.venv/bin/python bench/knowledge_quality.py [--towns 60]``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "sdk"), str(ROOT)]

from knowledge_dataset import EvaluationSet, Question, evaluation_set  # noqa: E402

from sessionkit_server.common.db import Database  # noqa: E402
from sessionkit_server.common.identity import Owner  # noqa: E402
from sessionkit_server.knowledge import chunking  # noqa: E402
from sessionkit_server.knowledge.service import KnowledgeService, Progress, default_scopes  # noqa: E402
from sessionkit_server.knowledge.store import KnowledgeStore  # noqa: E402
from sessionkit_server.retrieval.embeddings import LocalEmbedder  # noqa: E402
from sessionkit_server.retrieval.fusion import rrf_normalized  # noqa: E402
from sessionkit_server.retrieval.vector_index import ChromaIndex  # noqa: E402

K = 10
OWNER = Owner("bench-quality", "evaluator", "s1")


@dataclass
class Scores:
    ndcg: float
    recall: float
    mrr: float


def ndcg_at_k(relevant: list[bool], total_relevant: int, k: int = K) -> float:
    dcg = sum(1.0 / math.log2(rank + 2) for rank, hit in enumerate(relevant[:k]) if hit)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(total_relevant, k)))
    return dcg / ideal if ideal else 0.0


def score(relevant: list[bool], total_relevant: int) -> Scores:
    found = sum(relevant[:K])
    first = next((rank for rank, hit in enumerate(relevant[:K]) if hit), None)
    return Scores(
        ndcg_at_k(relevant, total_relevant),
        found / total_relevant if total_relevant else 0.0,
        1.0 / (first + 1) if first is not None else 0.0,
    )


def ignore(_: Progress) -> None:
    pass


async def build(data: EvaluationSet, directory: Path) -> tuple[KnowledgeService, dict[str, str], Database]:
    """The service with the set ingested; chunk id -> text."""
    db = Database(f"sqlite:///{directory / 'quality.db'}")
    service = KnowledgeService(
        KnowledgeStore(db), ChromaIndex.embedded(directory / "chroma"), LocalEmbedder()
    )
    await service.start()
    config = chunking.chunker_config(0, 0, None)
    scope = default_scopes(OWNER)[0]
    for name, text in data.documents.items():
        await service.add_text(OWNER, scope, text, name, "text/markdown", config, None, False, ignore)
    texts: dict[str, str] = {}
    after = 0
    while rows := await service.store.chunks_after(OWNER.app_name, after, 1000):
        after = rows[-1][0]
        texts.update({chunk.id: chunk.text for _, chunk, _ in rows})
    return service, texts, db


#: Candidates per ranking, as the service asks for a search of 10 (max(limit * 4, 40)).
DEPTH = 40
#: What-if rows: (the lexical ranking's weight, the RRF k) of the fusion; the service's own setting is
#: the "hybrid" row. (0.5, 60) was the default before the SciFact fit (bench/fit_scifact.py).
WHAT_IF = (
    (0.5, 60),
    (0.5, 3),
    (0.75, 5),
    (0.9, 5),
    (1.0, 60),
    (0.25, 60),
    (1.0, 10),
    (1.0, 20),
    (0.75, 10),
    (0.75, 20),
    (0.5, 10),
    (0.5, 20),
    (0.5, 5),
)


async def rankings(service: KnowledgeService, question: Question) -> dict[str, list[str]]:
    scopes = default_scopes(OWNER)
    vector = await service.embedder.embed_one(question.text)
    dense = [i for i, _ in await service._dense(OWNER.app_name, scopes, vector, DEPTH)]
    lexical = [i for i, _ in await service.store.lexical(OWNER.app_name, scopes, question.text, DEPTH)]
    hybrid = await service.search(OWNER, question.text, limit=K)
    out = {"hybrid": [h.chunk.id for h in hybrid], "dense": dense[:K], "lexical": lexical[:K]}
    for weight, k in WHAT_IF:
        # The same candidate lists as the search, fused with another setting (every chunk here is
        # current, so the search's row filter changes nothing).
        fused = rrf_normalized([dense, lexical], k=k, weights=[1.0, weight])
        out[f"what-if: hybrid, lexical weight {weight}, rrf k {k}"] = list(fused)[:K]
    return out


async def evaluate(towns: int) -> dict[tuple[str, str], Scores]:
    """Mean scores by (method, question kind), kind "all" included."""
    data = evaluation_set(towns)
    with tempfile.TemporaryDirectory(prefix="sk-knowledge-quality-") as tmp:
        started = time.perf_counter()
        service, texts, db = await build(data, Path(tmp))
        print(
            f"evaluation set: {len(data.documents)} documents, {len(texts)} chunks, "
            f"{len(data.questions)} questions (ingested in {time.perf_counter() - started:.1f} s)",
            flush=True,
        )
        relevant_chunks: dict[str, set[str]] = defaultdict(set)
        for chunk_id, text in texts.items():
            for q in data.questions:
                if q.fact in text:
                    relevant_chunks[q.fact].add(chunk_id)
        per: dict[tuple[str, str], list[Scores]] = defaultdict(list)
        for question in data.questions:
            wanted = relevant_chunks[question.fact]
            for method, ranked in (await rankings(service, question)).items():
                result = score([i in wanted for i in ranked], len(wanted))
                per[(method, question.kind)].append(result)
                per[(method, "all")].append(result)
        await service.close()
        await db.close()
    return {
        key: Scores(
            sum(s.ndcg for s in values) / len(values),
            sum(s.recall for s in values) / len(values),
            sum(s.mrr for s in values) / len(values),
        )
        for key, values in per.items()
    }


def report(results: dict[tuple[str, str], Scores]) -> str:
    lines = [
        "| method | nDCG@10 all | recall@10 all | MRR@10 all | nDCG@10 lexical q. | nDCG@10 paraphrase q. |",
        "|---|---|---|---|---|---|",
    ]
    methods = sorted(
        {method for method, _ in results}, key=lambda m: (m.startswith("what-if"), m != "hybrid", m)
    )
    for method in methods:
        a, lx, pa = results[(method, "all")], results[(method, "lexical")], results[(method, "paraphrase")]
        lines.append(
            f"| {method} | {a.ndcg:.3f} | {a.recall:.3f} | {a.mrr:.3f} | {lx.ndcg:.3f} | {pa.ndcg:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--towns", type=int, default=60, help="documents in the set (6 facts, 12 questions each)"
    )
    args = parser.parse_args()
    print(report(asyncio.run(evaluate(args.towns))))


if __name__ == "__main__":
    main()
