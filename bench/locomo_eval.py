"""Memory search on LoCoMo (the first five conversations, ../shared/data/locomo-dev.json) through the
public SDK, with the README's metric, against off-the-shelf baselines computed in the same run on the
same texts (bench/eval_data.py).

Method (../shared/data/README.md): the embedded default server (``AsyncSession(storage_path=<temp
dir>)``, SQLite and embedded Chroma, the packaged all-MiniLM-L6-v2); every turn is one long-term memory
of one user per conversation, stored as ``"[<session date>] <speaker>: <text>"`` (+ ``" [shares image:
<caption>]"``) with its dia_id in the metadata, default quality, one ``add_memories`` call per session
(so dedup and near-duplicate merging apply as for any user); each question with evidence is a
``search_memory(question, memory_type="long", limit=10)``; recall@k = the share of the question's
evidence turns among the top k results, averaged over questions, overall and per category. A result
stands for every turn whose add returned it (a merged turn is found through the memory it was merged
into); how many turns were merged, and whether merged evidence is still found, is reported (item 7 of
issue 13).

``--database-url postgresql://...`` runs the same on PostgreSQL, configured as a user configures it
(``SESSIONKIT_DATABASE_URL`` in the embedded server's environment), under an app name of its own per
run (an empty database is not needed). Every run also reports the store's lexical ranking alone
(``MemoryStore.lexical`` on the server's database: FTS5 bm25 on SQLite, BM25 in SQL on PostgreSQL,
sessionkit_server.retrieval.bm25), the figure to hold against bm25s.

Run: ``.venv/bin/python bench/locomo_eval.py [--conversations 5] [--json out.json] [--database-url
URL]``. Skips (exit 0) when the data is absent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path[:0] = [
    str(Path(__file__).resolve().parent.parent / "sdk"),
    str(Path(__file__).resolve().parent.parent),
]

from eval_data import Conversation, RecallTable, baselines, locomo, require_data  # noqa: E402

from sessionkit import AsyncSession  # noqa: E402
from sessionkit_server.common.db import Database  # noqa: E402
from sessionkit_server.common.identity import Owner  # noqa: E402
from sessionkit_server.memory.store import MemoryStore  # noqa: E402
from sessionkit_server.memory.tables import LONG  # noqa: E402

APP = "locomo"
LIMIT = 10


def database_url(storage: Path) -> str:
    """The URL of the database the embedded server writes: SESSIONKIT_DATABASE_URL, or its SQLite file."""
    configured = os.environ.get("SESSIONKIT_DATABASE_URL")
    if configured:
        return configured
    found = sorted(storage.rglob("sessionkit.db"))
    if not found:
        raise SystemExit(f"no sessionkit.db under {storage}")
    return f"sqlite:///{found[0]}"


async def ingest(storage: Path, conv: Conversation) -> tuple[dict[str, set[str]], dict[str, str], int]:
    """Store every turn; returns (memory id -> dia_ids stored in it, dia_id -> memory id, merged
    turns)."""
    held: dict[str, set[str]] = {}
    where: dict[str, str] = {}
    merged = 0
    for number in sorted(conv.sessions):
        turns = [t for t in conv.turns if t.session == number]
        session = AsyncSession(
            f"{conv.sample_id}-s{number}",
            user_id=conv.sample_id,
            storage_path=storage,
            app_name=APP,
            timeout=300,
        )
        items = [
            {"text": t.memory_text(), "metadata": {"dia_id": t.dia_id, "session": number}} for t in turns
        ]
        replies = await session.add_memories(items, "long")
        assert replies is not None
        for turn, reply in zip(turns, replies, strict=True):
            held.setdefault(reply["id"], set()).add(turn.dia_id)
            where[turn.dia_id] = reply["id"]
            merged += bool(reply.get("merged") or reply.get("deduplicated"))
        await session.close()
    return held, where, merged


async def evaluate(storage: Path, convs: list[Conversation], table: RecallTable) -> dict[str, object]:
    merged_total = 0
    merged_evidence: list[tuple[str, bool]] = []  # (dia_id, found in the top 10 for every question)
    seconds_add = seconds_search = 0.0
    searches = 0
    for conv in convs:
        start = time.perf_counter()
        held, _, merged = await ingest(storage, conv)
        seconds_add += time.perf_counter() - start
        merged_total += merged
        session = AsyncSession(
            f"{conv.sample_id}-q", user_id=conv.sample_id, storage_path=storage, app_name=APP
        )
        shared = {d for ids in held.values() if len(ids) > 1 for d in ids}
        store_db = Database(database_url(storage))
        store = MemoryStore(store_db)
        owner = Owner(APP, conv.sample_id, f"{conv.sample_id}-q")
        engine = "BM25 in SQL, PostgreSQL" if store_db.is_postgres else "FTS5 bm25, SQLite"
        lexical_name = f"store lexical only ({engine})"
        for q in conv.questions:
            lexical = await store.lexical(owner, LONG, q.text, LIMIT, time.time_ns() // 1000)
            table.add(lexical_name, q, [held.get(i, set()) for i, _ in lexical])
            start = time.perf_counter()
            hits = await session.search_memory(q.text, memory_type="long", limit=LIMIT)
            seconds_search += time.perf_counter() - start
            searches += 1
            ranked = [held.get(h["id"], set()) for h in hits]
            table.add("sessionkit search_memory (SDK)", q, ranked)
            top = {d for ids in ranked for d in ids}
            merged_evidence += [(e, e in top) for e in q.evidence if e in shared]
        await session.close()
        await store_db.close()
        texts = [t.memory_text() for t in conv.turns]
        for name, rankings in baselines(texts, [q.text for q in conv.questions]):
            for q, ranking in zip(conv.questions, rankings, strict=True):
                table.add(name, q, [{conv.turns[i].dia_id} for i in ranking])
        print(f"  {conv.sample_id}: {len(conv.turns)} turns, {len(conv.questions)} questions", flush=True)
    return {
        "turns merged or deduplicated": merged_total,
        "evidence turns stored in a shared memory (question, turn) pairs": len(merged_evidence),
        "of those found in the top 10": sum(1 for _, ok in merged_evidence if ok),
        "seconds adding (add_memories per session)": round(seconds_add, 1),
        "search ms mean (SDK, embedded)": round(1000 * seconds_search / max(1, searches), 1),
    }


from report import Recorder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument(
        "--database-url", help="run on this database (e.g. postgresql://user@host/db) instead of SQLite"
    )
    args = parser.parse_args()
    global APP
    if args.database_url:
        # As a user configures PostgreSQL: the embedded server reads it from its environment. An app
        # name per run keeps reruns on one database apart (dedup would find the last run's turns).
        os.environ["SESSIONKIT_DATABASE_URL"] = args.database_url
        APP = f"locomo-{uuid.uuid4().hex[:8]}"
    folder = require_data("locomo-dev.json")
    convs = locomo(folder / "locomo-dev.json")[: args.conversations]
    print(
        f"LoCoMo dev: {len(convs)} conversations, {sum(len(c.questions) for c in convs)} questions",
        flush=True,
    )
    table = RecallTable()
    with tempfile.TemporaryDirectory(prefix="sk-locomo-") as tmp:
        notes = asyncio.run(evaluate(Path(tmp), convs, table))
    print(table.markdown())
    for key, value in notes.items():
        print(f"- {key}: {value}")
    if args.json:
        args.json.write_text(
            json.dumps({"table": table.as_json(), "notes": notes}, indent=2), encoding="utf-8"
        )
    backend = "postgresql" if args.database_url else "sqlite"
    rec = Recorder(
        "locomo_eval" if backend == "sqlite" else "locomo_eval_pg",
        config={"conversations": args.conversations, "backend": backend, **notes},
    )
    questions = sum(len(c.questions) for c in convs)
    rows = table.as_json()
    first = next(iter(rows), None)
    for method, values in rows.items():  # for REPORT.md: recall, the first method as the baseline
        for k in ("R@5", "R@10"):
            base = None if method == first else f"{first} {k}"
            rec.value(f"{method} {k}", values[k], n=questions, unit="recall", baseline=base)
    rec.save()


if __name__ == "__main__":
    main()
