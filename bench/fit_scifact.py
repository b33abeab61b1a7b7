"""Fit the knowledge search's fusion (lexical weight, RRF constant) on SciFact train, from the data a
``bench/scifact_eval.py --storage DIR`` run left (its server stopped: it shuts down when idle, or stop
it): the dense ranking is the service's Chroma partition queried as the service queries it, the lexical
ranking ``KnowledgeStore.lexical`` on the same database, each ``--depth`` deep (the service's depth for
the eval's limit of 30: max(4 x 30, 40) = 120), fused by ``rrf_normalized`` as the service fuses
them; a document ranks at its best chunk; nDCG@10 over the 809 train queries (eval_data.ndcg_at_10).
Two grids: the service's fusion (``rrf_normalized`` over chunks) and, measured and not adopted
(docs/KNOWLEDGE.md), documents ranked (:func:`grouped`: each ranking read document by document, a
document's best chunk scoring the fusion of those places). Prints the grids and the service's current
setting; the default in services/knowledge/base.py is set from
it by hand, checked against bench/knowledge_quality.py (the synthetic set must not get worse).

Run: ``.venv/bin/python bench/fit_scifact.py --storage DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path[:0] = [
    str(Path(__file__).resolve().parent.parent / "sdk"),
    str(Path(__file__).resolve().parent.parent),
]

from eval_data import ndcg_at_10, require_data, scifact  # noqa: E402

from sessionkit_server.common.db import Database  # noqa: E402
from sessionkit_server.knowledge import tables as t  # noqa: E402
from sessionkit_server.knowledge.base import KnowledgeSettings  # noqa: E402
from sessionkit_server.knowledge.store import KnowledgeStore, Scope, vector_collection  # noqa: E402
from sessionkit_server.retrieval.embeddings import LocalEmbedder  # noqa: E402
from sessionkit_server.retrieval.fusion import rrf_normalized  # noqa: E402
from sessionkit_server.retrieval.vector_index import ChromaIndex  # noqa: E402

APP, USER = "scifact", "bench"
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 1000.0)
RRF_KS = (5, 10, 20, 30, 60, 100)
Rankings = tuple[list[str], list[list[str]], list[list[str]], dict[str, str]]


async def rankings(storage: Path, depth: int) -> Rankings:
    data = scifact(require_data("scifact-train") / "scifact-train")
    db = Database(f"sqlite:///{storage / 'data' / 'sessionkit.db'}")
    store = KnowledgeStore(db)
    index = ChromaIndex.embedded(storage / "data" / "chroma")
    scope = Scope(t.USER, USER, "")
    coll = vector_collection(APP, scope)
    embedder = LocalEmbedder()
    qids = list(data.queries)
    vectors = await embedder.embed([data.queries[q] for q in qids])
    dense: list[list[str]] = []
    lexical: list[list[str]] = []
    for qid, vector in zip(qids, vectors, strict=True):
        dense.append([i for i, _ in await index.query(coll, vector, depth)])
        lexical.append([i for i, _ in await store.lexical(APP, [scope], data.queries[qid], depth)])
    ids = sorted({i for ranking in dense + lexical for i in ranking})
    found = await store.current_chunks(APP, [scope], ids)
    doc_of = {i: source.name.removesuffix(".txt") for i, (_, source) in found.items()}
    await index.close()
    await db.close()
    return qids, dense, lexical, doc_of


def grouped(rankings: list[list[str]], doc_of: dict[str, str], k: int, weights: list[float]) -> list[str]:
    """The chunks ranked with each document's best chunk (first in the chunk-level fusion) scored by the
    fusion of the rankings read document by document (a document at the place of its first chunk), the
    document's other chunks keeping their chunk-level score: a 2-chunk abstract whose chunks were found
    one by each ranking then counts as found by both, as a 1-chunk abstract does."""
    items = rrf_normalized(rankings, k, weights)
    by_doc: list[list[str]] = []
    for ranking in rankings:
        by_doc.append(list(dict.fromkeys(doc_of[c] for c in ranking if c in doc_of)))
    docs = rrf_normalized(by_doc, k, weights)
    scores: dict[str, float] = {}
    led: set[str] = set()
    for item, value in items.items():
        doc = doc_of.get(item)
        if doc is not None and doc not in led:
            led.add(doc)
            value = max(value, docs[doc])
        scores[item] = value
    order = {item: n for n, item in enumerate(items)}
    return sorted(scores, key=lambda item: (-scores[item], order[item]))


def score(
    found: Rankings, qrels: dict[str, dict[str, int]], w: float, k: int, by_document: bool = False
) -> float:
    qids, dense, lexical, doc_of = found
    total = 0.0
    for qid, d, lx in zip(qids, dense, lexical, strict=True):
        ranked: list[str] = []
        if by_document:
            fused: list[str] = grouped([d, lx], doc_of, k, [1.0, w])
        else:
            fused = list(rrf_normalized([d, lx], k=k, weights=[1.0, w]))
        for chunk in fused:
            doc = doc_of.get(chunk)
            if doc is not None and doc not in ranked:
                ranked.append(doc)
        total += ndcg_at_10(ranked[:30], qrels[qid])
    return total / len(qids)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--storage", type=Path, required=True)
    parser.add_argument("--depth", type=int, default=120)
    args = parser.parse_args()
    found = asyncio.run(rankings(args.storage, args.depth))
    qrels = scifact(require_data("scifact-train") / "scifact-train").qrels
    current = KnowledgeSettings()
    print(f"{len(found[0])} queries, depth {args.depth}")
    for by_document in (False, True):
        print("documents ranked (not adopted)" if by_document else "chunks ranked (the service)")
        print("| lexical weight \\ rrf k | " + " | ".join(str(k) for k in RRF_KS) + " |")
        print("|---" * (len(RRF_KS) + 1) + "|")
        best = (0.0, 0.0, 0)
        for w in WEIGHTS:
            row = []
            for k in RRF_KS:
                value = score(found, qrels, w, k, by_document)
                row.append(f"{value:.4f}")
                best = max(best, (value, w, k))
            print(f"| {w} | " + " | ".join(row) + " |")
        now = score(found, qrels, current.weight_lexical_rank, current.rrf_k, by_document)
        print(f"current ({current.weight_lexical_rank} / {current.rrf_k}): {now:.4f}")
        print(f"best: {best[0]:.4f} at lexical weight {best[1]}, rrf k {best[2]}")


if __name__ == "__main__":
    main()
