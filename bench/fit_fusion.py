"""Fit the hybrid search's fusion (the dense and lexical rankings' weights and the RRF constant) on
LoCoMo dev (../shared/data) and the project's synthetic memory and knowledge sets together.

For each set the two rankings are computed as the services compute them, in this process, without a
server (so a grid over the fusion costs nothing once they are known):

- dense: cosine of the packaged all-MiniLM-L6-v2 embeddings, exact (the service's Chroma HNSW index
  returns the same top 40 on collections of this size);
- lexical: the stores' SQLite query, on an in-memory FTS5 table with the migrations' tokenizer and
  ``bm25()``, the query's terms from sessionkit_server.retrieval.words.fts5_match (the same call as
  MemoryStore.lexical / KnowledgeStore.lexical);

each ``DEPTH`` (40, the service's depth for a search of 10) deep. Every (weight, k) of the grid is
scored by recall@5 (LoCoMo: the share of evidence turns, the data README's metric; synthetic memory:
the answer memory in the top 5) and nDCG@10 (synthetic knowledge), and the objective is their mean,
each set counting once. The grid's best and the service's current setting are printed; the defaults in
services/memory/base.py and services/knowledge/base.py are set from this output by hand (a setting is
a decision to review, not a file the script rewrites).

The synthetic sets are embedded on every run (a few minutes on a busy 2-core machine); ``--cache FILE``
keeps the embeddings between runs.

Run: ``.venv/bin/python bench/fit_fusion.py [--cache /tmp/fit-cache.pkl] [--skip-synthetic]``.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import sqlite3
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "sdk"), str(ROOT)]

import eval_data  # noqa: E402
from eval_data import data_dir, locomo  # noqa: E402

from sessionkit_server.memory.store import CONTEXT_WEIGHT  # noqa: E402
from sessionkit_server.retrieval.fusion import RRF_K, rrf  # noqa: E402
from sessionkit_server.retrieval.words import fts5_match  # noqa: E402

DEPTH = 40
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 1000.0)  # lexical weight, dense fixed at 1
RRF_KS = (10, 30, 60, 100)
_cache: dict[str, np.ndarray] = {}


def embed(texts: Sequence[str]) -> np.ndarray:
    missing = [t for t in dict.fromkeys(texts) if t not in _cache]
    if missing:
        for text, vector in zip(missing, eval_data.embed(missing), strict=True):
            _cache[text] = vector
    return np.stack([_cache[t] for t in texts])


@dataclass
class Group:
    """One searchable collection (a user's memories, a knowledge base) and its questions."""

    docs: list[str]
    queries: list[str]
    #: Per doc: its lexical context (the memory store indexes the previous memory of the session
    #: beside each memory, migration m0005); "" for knowledge chunks.
    contexts: list[str]
    #: Per query: the relevant doc indexes (with their grade) and how the query is scored.
    relevant: list[dict[int, float]]
    metric: str  # "recall5" (share of relevant in top 5) or "ndcg10"


def lexical_rankings(docs: Sequence[str], contexts: Sequence[str], queries: Sequence[str]) -> list[list[int]]:
    """The stores' SQLite lexical ranking (FTS5, 'porter unicode61', bm25 with the memory store's
    column weights), on an in-memory table."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE f USING fts5(text, context, tokenize='porter unicode61')")
    conn.executemany(
        "INSERT INTO f(rowid, text, context) VALUES (?, ?, ?)",
        [(i, d, c) for i, (d, c) in enumerate(zip(docs, contexts, strict=True))],
    )
    out: list[list[int]] = []
    for q in queries:
        match = fts5_match(q)
        rows = (
            conn.execute(
                "SELECT rowid FROM f WHERE f MATCH ? ORDER BY bm25(f, 1.0, ?) LIMIT ?",
                (match, CONTEXT_WEIGHT, DEPTH),
            ).fetchall()
            if match
            else []
        )
        out.append([r[0] for r in rows])
    conn.close()
    return out


def dense_rankings(docs: Sequence[str], queries: Sequence[str]) -> list[list[int]]:
    scores = embed(queries) @ embed(docs).T
    return [list(map(int, np.argsort(-row, kind="stable")[:DEPTH])) for row in scores]


def score(ranked: Sequence[int], relevant: dict[int, float], metric: str) -> float:
    if metric == "recall5":
        return sum(1 for d in ranked[:5] if d in relevant) / max(1, len(relevant))
    dcg = sum(relevant.get(d, 0.0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(relevant.values(), reverse=True)[:10]))
    return dcg / ideal if ideal else 0.0


def prepared(groups: list[Group]) -> list[tuple[Group, list[list[int]], list[list[int]]]]:
    return [
        (g, dense_rankings(g.docs, g.queries), lexical_rankings(g.docs, g.contexts, g.queries))
        for g in groups
    ]


def evaluate(
    sets: dict[str, list[tuple[Group, list[list[int]], list[list[int]]]]],
    fuse: Callable[[list[int], list[int]], list[int]],
) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, groups in sets.items():
        values = [
            score(fuse(d, lx), rel, g.metric)
            for g, dense, lexical in groups
            for d, lx, rel in zip(dense, lexical, g.relevant, strict=True)
        ]
        out[name] = sum(values) / len(values)
    return out


def rrf_fuser(lexical_weight: float, k: int) -> Callable[[list[int], list[int]], list[int]]:
    def fuse(dense: list[int], lexical: list[int]) -> list[int]:
        named = rrf([[str(i) for i in dense], [str(i) for i in lexical]], k, [1.0, lexical_weight])
        return [int(i) for i in named]

    return fuse


def locomo_groups() -> list[Group]:
    folder = data_dir()
    if folder is None or not (folder / "locomo-dev.json").exists():
        print("LoCoMo dev not found (../shared/data): fitting on the synthetic sets only")
        return []
    groups: list[Group] = []
    for conv in locomo(folder / "locomo-dev.json"):
        position = {t.dia_id: i for i, t in enumerate(conv.turns)}
        texts = [t.memory_text() for t in conv.turns]
        groups.append(
            Group(
                texts,
                [q.text for q in conv.questions],
                [
                    texts[i - 1] if i and conv.turns[i - 1].session == t.session else ""
                    for i, t in enumerate(conv.turns)
                ],
                [{position[e]: 1.0 for e in q.evidence} for q in conv.questions],
                "recall5",
            )
        )
    return groups


def synthetic_memory_groups() -> list[Group]:
    from memory_dataset import generate

    groups: list[Group] = []
    for conv in generate():
        texts: list[str] = []
        contexts: list[str] = []
        where: dict[tuple[int, int], int] = {}
        seen: dict[str, int] = {}
        last: tuple[int, str] = (-1, "")  # (session, text) of the last memory written
        for turn in conv.turns():  # exact repeats are one memory (the service deduplicates them)
            key = " ".join(turn.text.casefold().split())
            if key not in seen:
                seen[key] = len(texts)
                texts.append(turn.text)
                contexts.append(last[1] if last[0] == turn.session else "")
                last = (turn.session, turn.text)
            where[(turn.session, turn.index)] = seen[key]
        questions = [q.text for q in conv.questions]
        relevant: list[dict[int, float]] = [{where[q.gold]: 1.0} for q in conv.questions]
        groups.append(Group(texts, questions, contexts, relevant, "recall5"))
    return groups


def synthetic_knowledge_groups() -> list[Group]:
    from knowledge_dataset import evaluation_set

    from sessionkit_server.knowledge import chunking, parsing

    data = evaluation_set(60)
    config = chunking.chunker_config(0, 0, None)
    chunks: list[str] = []
    for name, text in data.documents.items():  # as KnowledgeService.add_text parses and splits it
        extracted = parsing.extract(name, "text/markdown", text.encode())
        chunks.extend(c.text for c in chunking.split(extracted.text, config))
    relevant = [{i: 1.0 for i, c in enumerate(chunks) if q.fact in c} for q in data.questions]
    return [Group(chunks, [q.text for q in data.questions], [""] * len(chunks), relevant, "ndcg10")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, help="keep embeddings in this file between runs")
    parser.add_argument("--skip-synthetic", action="store_true")
    args = parser.parse_args()
    if args.cache and args.cache.exists():
        _cache.update(pickle.loads(args.cache.read_bytes()))
    raw = {"LoCoMo dev R@5": locomo_groups()}
    if not args.skip_synthetic:
        raw["synthetic memory R@5"] = synthetic_memory_groups()
        raw["synthetic knowledge nDCG@10"] = synthetic_knowledge_groups()
    sets = {name: prepared(groups) for name, groups in raw.items() if groups}
    if args.cache:
        tmp = args.cache.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(_cache))
        os.replace(tmp, args.cache)
    results: list[tuple[float, float, int, dict[str, float]]] = []
    for k in RRF_KS:
        for w in WEIGHTS:
            figures = evaluate(sets, rrf_fuser(w, k))
            results.append((sum(figures.values()) / len(figures), w, k, figures))
    results.sort(key=lambda r: -r[0])
    names = list(sets)
    print("| lexical weight (dense 1) | RRF k | mean | " + " | ".join(names) + " |")
    print("|---" * (3 + len(names)) + "|")
    for mean, w, k, figures in results[:12]:
        print(f"| {w:g} | {k} | {mean:.3f} | " + " | ".join(f"{figures[n]:.3f}" for n in names) + " |")
    for w in (0.5, 1.0):
        figures = evaluate(sets, rrf_fuser(w, RRF_K))
        print(
            f"reference, lexical weight {w}, k {RRF_K}: " + ", ".join(f"{n} {figures[n]:.3f}" for n in names)
        )


if __name__ == "__main__":
    main()
