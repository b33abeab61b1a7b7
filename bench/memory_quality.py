"""Retrieval quality of the memory service on long multi-session conversations: recall@k and MRR of
hybrid search (the service's own) against dense-only and lexical-only retrieval.

The data set is bench/memory_dataset.py (synthetic, template-based, fixed seed; how it is made and its
limits are in that module's docstring). Method:

1. A real server (``sessionkit serve --service state --service memory``, its own process, a temp data
   directory) receives every user turn as a long-term memory, session by session, through the SDK
   (``AsyncSession(session_id=<user>-s<n>, user_id=<user>).store_long_memory(text)``, quality 0.7 for
   every turn), so dedup and near-duplicate merging apply as in production.
2. Each question is asked with ``search_memory(question, memory_type="long", limit=10)``: "hybrid".
3. The server is stopped, and the same building blocks the service searches with are queried on its
   data directory, in this process: "dense-only" = the all-MiniLM-L6-v2 embedding of the question
   (sessionkit_server.retrieval.embeddings.LocalEmbedder) against the Chroma index (ChromaIndex.query on the
   user's long-term partition, depth 40, as the service); "lexical-only" = MemoryStore.lexical (FTS5
   bm25 among the user's rows, stop words dropped: the same call as the service). "hybrid
   (recomputed)" fuses those two lists with sessionkit_server.retrieval.fusion exactly as the service does
   (lexical ranking weighted 0.5), as a check that the offline lists are the service's. The what-if
   rows change one thing each: equal weights, stop words kept, or both (the fusion before issue 3's
   changes, with the user filter inside the lexical query).

A question is answered at rank r when the r-th result is the memory that stores the answer (the one the
add of the answering turn returned, still holding the answer's text: a turn merged into an older memory
whose text lacks the new value cannot be found by any method, and is counted as a miss everywhere).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from memory_common import MemoryServer, machine, percentile
from memory_dataset import SEED, Conversation, Question, describe, generate

from sessionkit import AsyncSession
from sessionkit_server.common.db import Database
from sessionkit_server.memory import tables as t
from sessionkit_server.memory.service import MemorySettings
from sessionkit_server.memory.store import MemoryStore, Owner, vector_collection
from sessionkit_server.retrieval.embeddings import LocalEmbedder
from sessionkit_server.retrieval.fusion import FusionWeights, fused_score, recency, rrf_normalized
from sessionkit_server.retrieval.vector_index import ChromaIndex

APP = "bench-quality"
DEPTH = 40  # the service's candidate depth per ranking for limit <= 10: max(4 * limit, 40)
LIMIT = 10


@dataclass
class Stored:
    """What the server answered for one turn's add."""

    id: str
    text: str
    deduplicated: bool
    merged: bool


@dataclass
class Scores:
    ranks: list[int | None] = field(default_factory=list)  # 1-based rank of the answer, None = not in top 10

    def recall(self, k: int, subset: list[int] | None = None) -> float:
        ranks = self._subset(subset)
        return sum(1 for r in ranks if r is not None and r <= k) / max(1, len(ranks))

    def mrr(self, subset: list[int] | None = None) -> float:
        ranks = self._subset(subset)
        return sum(1.0 / r for r in ranks if r is not None) / max(1, len(ranks))

    def _subset(self, subset: list[int] | None) -> list[int | None]:
        return self.ranks if subset is None else [self.ranks[i] for i in subset]


async def ingest(
    address: str, conversations: list[Conversation], parallel_users: int
) -> dict[tuple[str, int, int], Stored]:
    """Every turn of every user, in order per user (users in parallel); (user, session, turn) -> Stored."""
    stored: dict[tuple[str, int, int], Stored] = {}
    queue = list(conversations)
    done = 0
    total = sum(1 for c in conversations for _ in c.turns())
    start = time.perf_counter()

    async def worker() -> None:
        nonlocal done
        while queue:
            conv = queue.pop(0)
            for s, session_turns in enumerate(conv.sessions):
                session = AsyncSession(f"{conv.user}-s{s}", user_id=conv.user, address=address, app_name=APP)
                for turn in session_turns:
                    reply = await session.store_long_memory(turn.text, session=s, turn=turn.index)
                    assert reply is not None
                    stored[(conv.user, s, turn.index)] = Stored(
                        reply["id"], reply["text"], bool(reply["deduplicated"]), bool(reply["merged"])
                    )
                    done += 1
                await session.close()
            print(
                f"  stored {conv.user}: {done}/{total} turns, {done / (time.perf_counter() - start):.1f}/s",
                flush=True,
            )

    await asyncio.gather(*(worker() for _ in range(parallel_users)))
    return stored


def gold_id(q: Question, stored: dict[tuple[str, int, int], Stored]) -> str | None:
    """The id of the memory that answers ``q`` (None if its text no longer holds the answer)."""
    memory = stored[(q.user, *q.gold)]
    return memory.id if q.answer.lower() in memory.text.lower() else None


def rank_of(gold: str | None, ranked: list[str]) -> int | None:
    if gold is None:
        return None
    top = ranked[:LIMIT]
    return top.index(gold) + 1 if gold in top else None


async def hybrid_on_server(address: str, questions: list[Question]) -> tuple[list[list[str]], list[float]]:
    results: list[list[str]] = []
    latencies: list[float] = []
    sessions: dict[str, AsyncSession] = {}
    warm = AsyncSession("warm", user_id=questions[0].user, address=address, app_name=APP)
    for q in questions[:5]:  # warm up connections and the server's first queries
        await warm.search_memory(q.text, memory_type="long", limit=LIMIT)
    await warm.close()
    for q in questions:
        session = sessions.get(q.user)
        if session is None:
            session = sessions[q.user] = AsyncSession(
                f"{q.user}-questions", user_id=q.user, address=address, app_name=APP
            )
        start = time.perf_counter()
        hits = await session.search_memory(q.text, memory_type="long", limit=LIMIT)
        latencies.append((time.perf_counter() - start) * 1e3)
        results.append([h["id"] for h in hits])
    for session in sessions.values():
        await session.close()
    return results, latencies


#: The service's weight of the lexical ranking in the fusion.
LEXICAL_WEIGHT = MemorySettings().weight_lexical_rank


def fuse(dense: list[str], lexical: list[str], lexical_weight: float = LEXICAL_WEIGHT) -> dict[str, float]:
    """Reciprocal rank fusion as the service computes it (retrieval.fusion.rrf_normalized)."""
    return rrf_normalized([dense, lexical], k=MemorySettings().rrf_k, weights=[1.0, lexical_weight])


async def final_order(store: MemoryStore, owner: Owner, fused: dict[str, float], now: int) -> list[str]:
    """The service's final score over fused candidates: relevance, quality and recency."""
    rows = await store.by_ids(owner, list(fused), now)
    scored = []
    for memory_id, relevance in fused.items():
        record = rows.get(memory_id)
        if record is None:
            continue
        fresh = recency(max(0.0, (now - record.update_us) / 86_400e6), 30.0)
        scored.append((fused_score(relevance, record.quality, fresh, FusionWeights()), memory_id))
    scored.sort(key=lambda item: -item[0])
    return [memory_id for _, memory_id in scored]


async def offline_rankings(data_dir: Path, questions: list[Question]) -> dict[str, list[list[str]]]:
    """Dense-only, lexical-only, the recomputed hybrid and the what-ifs, from the stopped server's data."""
    db = Database(f"sqlite:///{data_dir / 'sessionkit.db'}")
    store = MemoryStore(db)
    index = ChromaIndex.embedded(data_dir / "chroma")
    embedder = LocalEmbedder()
    out: dict[str, list[list[str]]] = {}
    try:
        for q in questions:
            owner = Owner(APP, q.user, f"{q.user}-questions")
            now = time.time_ns() // 1000
            vector = await embedder.embed_one(q.text)
            hits = await index.query(vector_collection(APP, q.user, t.LONG, ""), vector, DEPTH)
            dense = [i for i, _ in hits]
            lexical = [i for i, _ in await store.lexical(owner, t.LONG, q.text, DEPTH, now)]
            with_stop = [
                i for i, _ in await store.lexical(owner, t.LONG, q.text, DEPTH, now, keep_stop_words=True)
            ]
            lists = {
                "dense-only": dense,
                "lexical-only": lexical,
                "hybrid (recomputed)": await final_order(store, owner, fuse(dense, lexical), now),
                "what-if: lexical, stop words kept": with_stop,
                "what-if: hybrid, equal weights": await final_order(
                    store, owner, fuse(dense, lexical, 1.0), now
                ),
                "what-if: hybrid, stop words kept": await final_order(
                    store, owner, fuse(dense, with_stop), now
                ),
                "what-if: hybrid, both (as before)": await final_order(
                    store, owner, fuse(dense, with_stop, 1.0), now
                ),
            }
            for name, ranked in lists.items():
                out.setdefault(name, []).append(ranked)
    finally:
        await index.close()
        await db.close()
    return out


def report(
    questions: list[Question],
    golds: list[str | None],
    rankings: dict[str, list[list[str]]],
) -> dict[str, Scores]:
    scores: dict[str, Scores] = {}
    for name, ranked_lists in rankings.items():
        s = Scores()
        for gold, ranked in zip(golds, ranked_lists, strict=True):
            s.ranks.append(rank_of(gold, ranked))
        scores[name] = s
    subsets: dict[str, list[int] | None] = {
        "all": None,
        "own facts": [i for i, q in enumerate(questions) if q.about == "self"],
        "updated": [i for i, q in enumerate(questions) if q.updated],
        "other people": [i for i, q in enumerate(questions) if q.about == "other"],
        "lookup": [i for i, q in enumerate(questions) if q.about == "lookup"],
        "paraphrase": [i for i, q in enumerate(questions) if q.style == "paraphrase"],
        "keyword": [i for i, q in enumerate(questions) if q.style == "keyword"],
    }
    print(f"\n{'method':38} {'recall@1':>9} {'recall@5':>9} {'MRR@10':>7}   recall@5 by question")
    header = "  ".join(
        f"{name} ({len(ix) if ix is not None else len(questions)})" for name, ix in subsets.items()
    )
    print(f"{'':38} {'':9} {'':9} {'':7}   {header}")
    for name, s in scores.items():
        parts = "  ".join(f"{s.recall(5, ix):.3f}" for ix in subsets.values())
        print(f"{name:38} {s.recall(1):9.3f} {s.recall(5):9.3f} {s.mrr():7.3f}   {parts}")
    return scores


def print_merges(conversations: list[Conversation], stored: dict[tuple[str, int, int], Stored]) -> None:
    """Which turns near-duplicate merging folded into an older memory, and how many of those said
    something the older memory does not (another name, number or date: that information is gone)."""
    merged = [(turn, stored[(c.user, turn.session, turn.index)]) for c in conversations for turn in c.turns()]
    merged = [(turn, s) for turn, s in merged if s.merged]
    if not merged:
        return

    def details(text: str) -> set[str]:
        return set(re.findall(r"\b(?:[A-Z][a-z]+|\d+)\b", text)) - {"I", "My", "The", "What", "How", "Can"}

    lost = [(turn, s) for turn, s in merged if details(turn.text) - details(s.text)]
    facts = sum(1 for turn, _ in merged if turn.fact)
    print(
        f"\nnear-duplicate merges: {len(merged)} turns ({facts} stating one of the user's facts); "
        f"{len(lost)} of them name a person, place, number or date the memory they were merged into "
        "does not have (that detail is no longer stored), e.g.:"
    )
    for turn, s in lost[:6]:
        print(f"  said {turn.text!r} -> kept {s.text!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--turns", type=int, default=30, help="user turns per session")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--parallel-users", type=int, default=4, help="users ingested concurrently")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the server process (repeatable), e.g. OMP_NUM_THREADS=1",
    )
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.server_env)

    conversations = generate(args.users, args.sessions, args.turns, args.seed)
    questions = [q for c in conversations for q in c.questions]
    print(f"memory retrieval quality: {describe(conversations)}, seed {args.seed}")
    print(f"machine: {machine()}" + (f"; server env {extra}" if extra else ""))
    with tempfile.TemporaryDirectory(prefix="sk-memq-") as tmp:
        data_dir = Path(tmp)
        server = MemoryServer(data_dir, extra).start()
        try:
            start = time.perf_counter()
            stored = asyncio.run(ingest(server.address, conversations, args.parallel_users))
            ingest_s = time.perf_counter() - start
            hybrid, latencies = asyncio.run(hybrid_on_server(server.address, questions))
        finally:
            server.stop()
        offline = asyncio.run(offline_rankings(data_dir, questions))

    merged = sum(1 for s in stored.values() if s.merged)
    deduplicated = sum(1 for s in stored.values() if s.deduplicated)
    golds = [gold_id(q, stored) for q in questions]
    lost = [q for q, g in zip(questions, golds, strict=True) if g is None]
    print(
        f"\ningested {len(stored)} turns in {ingest_s:.0f} s ({len(stored) / ingest_s:.1f}/s): "
        f"{len(stored) - merged - deduplicated} new memories, {deduplicated} exact duplicates, "
        f"{merged} merged into a near-duplicate"
    )
    print(
        f"hybrid search on the server: p50 {statistics.median(latencies):.1f} ms, "
        f"p99 {percentile(latencies, 0.99):.1f} ms ({len(latencies)} questions)"
    )
    if lost:
        print(
            f"{len(lost)} questions have no answer memory left (the answering turn was merged into an\n"
            "older memory whose text lacks the new value); they count as misses for every method:"
        )
        for q in lost[:8]:
            memory = stored[(q.user, *q.gold)]
            print(f"  {q.user} {q.fact}: answer {q.answer!r}, memory kept: {memory.text!r}")
    print_merges(conversations, stored)
    rankings = {"hybrid (service)": hybrid, **offline}
    report(questions, golds, rankings)
    same = sum(1 for a, b in zip(hybrid, offline["hybrid (recomputed)"], strict=True) if a[:5] == b[:5])
    print(
        f"\nThe recomputed hybrid has the service's top 5 for {same}/{len(questions)} questions "
        "(differences: ties, and memories changed between the two runs; none are changed here)."
    )


if __name__ == "__main__":
    main()
