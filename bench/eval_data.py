"""The public evaluation sets of ../shared/data (LoCoMo dev, SciFact train), their metrics and the
off-the-shelf baselines the service's search is compared with, exactly as ../shared/data/README.md
defines them. Shared by bench/locomo_eval.py, bench/scifact_eval.py and bench/fit_fusion.py.

The data is read where it is (never copied into the repository): ``SESSIONKIT_EVAL_DATA`` or the first
``shared/data`` folder found beside the repository or one of its parents (``../shared/data`` from the
main checkout). When it is absent, :func:`data_dir` says so and the benches skip.

Baselines, computed in the same run on the same texts:

- dense: all-MiniLM-L6-v2 (the packaged model, sentence-transformers), cosine on normalized vectors;
- BM25: ``bm25s`` (Lucene BM25, k1=1.5, b=0.75) with its English stop words and the Snowball English
  stemmer (PyStemmer), the README's reference setup;
- fusion: reciprocal-rank fusion of the two (k=60, equal weights), over each one's top 100.

``SESSIONKIT_EVAL_EMBEDDING_CACHE=FILE`` keeps the baseline's embeddings in FILE (by text), so a rerun
computes the baselines without embedding the corpus again (5,183 SciFact abstracts: tens of minutes on
a busy 2-core machine).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
#: LoCoMo's category numbers (the data's ``category``) and their names.
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
BASELINE_DEPTH = 100


def data_dir() -> Path | None:
    """The folder holding locomo-dev.json and scifact-train/, or None."""
    env = os.environ.get("SESSIONKIT_EVAL_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    for parent in (ROOT, *ROOT.parents):
        candidate = parent.parent / "shared" / "data"
        if (candidate / "README.md").is_file():
            return candidate
    return None


def require_data(what: str) -> Path:
    """The data folder, or exit 0 with a message naming what is missing (``make bench`` goes on)."""
    found = data_dir()
    if found is None or not (found / what).exists():
        print(
            f"skipped: {what} not found (looked for ../shared/data beside the repository or its parents; "
            "set SESSIONKIT_EVAL_DATA to the folder holding it)"
        )
        raise SystemExit(0)
    return found


# -- LoCoMo ------------------------------------------------------------------------------------------


@dataclass
class Turn:
    dia_id: str
    session: int
    date: str
    speaker: str
    text: str  # the turn's own words
    caption: str

    def memory_text(self) -> str:
        """The text stored for the turn, as the README's metric defines it."""
        out = f"[{self.date}] {self.speaker}: {self.text}"
        return out + (f" [shares image: {self.caption}]" if self.caption else "")


@dataclass
class Question:
    text: str
    evidence: list[str]  # dia_ids that exist in the conversation (a malformed one cannot be found)
    category: int


@dataclass
class Conversation:
    sample_id: str
    turns: list[Turn]
    questions: list[Question]
    sessions: dict[int, str] = field(default_factory=dict)  # session number -> its date text


def locomo(path: Path) -> list[Conversation]:
    """The conversations of locomo-dev.json, each with its questions that have evidence. Evidence ids
    that name no turn (4 of 1350, e.g. "D8:6; D9:17") are dropped from the question's evidence, as the
    reference figures do; a question left with none is kept and scores 0."""
    out: list[Conversation] = []
    for raw in json.loads(path.read_text(encoding="utf-8")):
        conv = raw["conversation"]
        turns: list[Turn] = []
        sessions: dict[int, str] = {}
        n = 1
        while f"session_{n}" in conv:
            date = conv[f"session_{n}_date_time"]
            sessions[n] = date
            for t in conv[f"session_{n}"]:
                caption = t.get("blip_caption") or ""
                turns.append(Turn(t["dia_id"], n, date, t["speaker"], t["text"], caption))
            n += 1
        ids = {t.dia_id for t in turns}
        questions = [
            Question(q["question"], [e for e in q["evidence"] if e in ids], int(q["category"]))
            for q in raw["qa"]
            if q.get("evidence")
        ]
        out.append(Conversation(str(raw.get("sample_id", len(out))), turns, questions, sessions))
    return out


def recall(evidence: Sequence[str], ranked: Sequence[set[str]], k: int) -> float:
    """The share of ``evidence`` among the dia_ids of the top ``k`` results (each result stands for the
    set of turns stored in it: a merged memory holds several)."""
    if not evidence:
        return 0.0
    found: set[str] = set()
    for ids in ranked[:k]:
        found |= ids
    return sum(1 for e in evidence if e in found) / len(evidence)


@dataclass
class RecallTable:
    """Recall@5/@10 per method, overall and per category."""

    rows: dict[str, dict[tuple[int, int], list[float]]] = field(default_factory=dict)

    def add(self, method: str, question: Question, ranked: Sequence[set[str]]) -> None:
        row = self.rows.setdefault(method, {})
        for k in (5, 10):
            value = recall(question.evidence, ranked, k)
            row.setdefault((k, 0), []).append(value)
            row.setdefault((k, question.category), []).append(value)

    def value(self, method: str, k: int, category: int = 0) -> float:
        values = self.rows[method].get((k, category), [])
        return sum(values) / len(values) if values else 0.0

    def markdown(self) -> str:
        any_row = next(iter(self.rows.values()))
        counts = {c: len(any_row.get((5, c), [])) for c in CATEGORIES}
        head = "| method | R@5 | R@10 | " + " | ".join(
            f"R@5 {CATEGORIES[c]} ({counts[c]})" for c in CATEGORIES
        )
        lines = [head + " |", "|---" * (3 + len(CATEGORIES)) + "|"]
        for method in self.rows:
            cells = [f"{self.value(method, 5):.3f}", f"{self.value(method, 10):.3f}"]
            cells += [f"{self.value(method, 5, c):.3f}" for c in CATEGORIES]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            m: {"R@5": self.value(m, 5), "R@10": self.value(m, 10)}
            | {f"R@5 {CATEGORIES[c]}": self.value(m, 5, c) for c in CATEGORIES}
            for m in self.rows
        }


# -- SciFact -----------------------------------------------------------------------------------------


@dataclass
class SciFact:
    corpus: dict[str, str]  # _id -> title + "\n\n" + text (the file's content)
    queries: dict[str, str]  # query id -> text (only queries with judgements)
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: grade}


def scifact(folder: Path) -> SciFact:
    corpus: dict[str, str] = {}
    for line in (folder / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        corpus[str(doc["_id"])] = f"{doc['title']}\n\n{doc['text']}"
    qrels: dict[str, dict[str, int]] = {}
    for n, line in enumerate((folder / "qrels" / "train.tsv").read_text(encoding="utf-8").splitlines()):
        parts = line.split("\t")
        if n == 0 and not parts[-1].strip().isdigit():
            continue  # the header
        qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    queries: dict[str, str] = {}
    for line in (folder / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        q = json.loads(line)
        if str(q["_id"]) in qrels:
            queries[str(q["_id"])] = q["text"]
    return SciFact(corpus, queries, qrels)


def ndcg_at_10(ranked_docs: Sequence[str], grades: dict[str, int]) -> float:
    """nDCG@10 of one query, graded gains, the log2 discount of trec_eval / BEIR."""
    dcg = sum(grades.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked_docs[:10]))
    ideal = sorted(grades.values(), reverse=True)[:10]
    best = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / best if best else 0.0


# -- baselines ---------------------------------------------------------------------------------------


def embed(texts: Sequence[str]) -> npt.NDArray[np.float32]:
    """Normalized all-MiniLM-L6-v2 embeddings (the packaged model, as the service embeds); with
    SESSIONKIT_EVAL_EMBEDDING_CACHE, those of texts embedded before are read from that file."""
    from sentence_transformers import SentenceTransformer

    from sessionkit_server.retrieval.embeddings import default_model_path

    global _model
    cache_file = os.environ.get("SESSIONKIT_EVAL_EMBEDDING_CACHE")
    if cache_file and not _cache and Path(cache_file).exists():
        _cache.update(pickle.loads(Path(cache_file).read_bytes()))  # a file this function wrote
    missing = [t for t in dict.fromkeys(texts) if t not in _cache]
    if missing:
        if _model is None:
            _model = SentenceTransformer(str(default_model_path()), device="cpu")
        vectors = _model.encode(missing, normalize_embeddings=True, batch_size=64)
        _cache.update(zip(missing, np.asarray(vectors, dtype=np.float32), strict=True))
        if cache_file:
            Path(f"{cache_file}.tmp").write_bytes(pickle.dumps(_cache))
            os.replace(f"{cache_file}.tmp", cache_file)
    return np.stack([_cache[t] for t in texts]).astype(np.float32)


_model: Any = None
_cache: dict[str, npt.NDArray[np.float32]] = {}


def dense_rankings(
    docs: Sequence[str], queries: Sequence[str], depth: int = BASELINE_DEPTH
) -> list[list[int]]:
    doc_vectors, query_vectors = embed(docs), embed(queries)
    scores = query_vectors @ doc_vectors.T
    return [list(map(int, np.argsort(-row, kind="stable")[:depth])) for row in scores]


def bm25_rankings(
    docs: Sequence[str], queries: Sequence[str], depth: int = BASELINE_DEPTH
) -> list[list[int]]:
    try:
        import bm25s
        import Stemmer
    except ImportError:
        sys.exit("the BM25 baseline needs bm25s and PyStemmer: pip install 'sessionkit-server[bench]'")
    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize(list(docs), stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False
    )
    tokens = bm25s.tokenize(list(queries), stopwords="en", stemmer=stemmer, show_progress=False)
    found, _ = retriever.retrieve(tokens, k=min(depth, len(docs)), show_progress=False)
    # As the reference figures: bm25s's top ``depth`` as it returns them (padded with score-0 documents
    # when fewer match).
    return [[int(d) for d in row] for row in found]


def rrf_rankings(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]], k: int = 60) -> list[list[int]]:
    out: list[list[int]] = []
    for ra, rb in zip(a, b, strict=True):
        scores: dict[int, float] = {}
        for ranking in (ra, rb):
            for rank, doc in enumerate(ranking, start=1):
                scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + rank)
        out.append(sorted(scores, key=lambda d: -scores[d]))
    return out


def baselines(docs: Sequence[str], queries: Sequence[str]) -> Iterator[tuple[str, list[list[int]]]]:
    """("dense" | "BM25" | "fusion", rankings of doc indexes per query)."""
    dense = dense_rankings(docs, queries)
    lexical = bm25_rankings(docs, queries)
    yield "dense all-MiniLM-L6-v2 (baseline)", dense
    yield "BM25 bm25s stemmed (baseline)", lexical
    yield "RRF k=60 of the two (baseline)", rrf_rankings(dense, lexical)
