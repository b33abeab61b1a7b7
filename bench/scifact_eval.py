"""Knowledge search on BEIR SciFact (../shared/data/scifact-train: 5,183 abstracts, the 809 train
queries) through the public SDK, with the README's metric, against off-the-shelf baselines computed in
the same run on the same texts (bench/eval_data.py).

Method (../shared/data/README.md): each document is one file ``<_id>.txt`` holding ``title + "\\n\\n" +
text``, added with ``add_knowledge(path)`` to the embedded default server (``AsyncSession(storage_path=
...)``); each query is a ``search_knowledge(query, limit=30)``; a document's rank is that of its best
chunk; nDCG@10 over the queries. The files are added as one batch (``add_knowledge(folder)``, several
uploads in flight; the server embeds concurrent adds together). With ``--storage
DIR`` the data directory is kept: a second run re-adds every file, which the service answers
"unchanged" without re-embedding, so only the searches cost time.

``--database-url postgresql://...`` runs the same on PostgreSQL, configured as a user configures it
(``SESSIONKIT_DATABASE_URL`` in the embedded server's environment), under an app name of its own per
run. Every run also reports the store's lexical ranking alone (``KnowledgeStore.lexical`` on the
server's database, top 30 chunks: FTS5 bm25 on SQLite, BM25 in SQL on PostgreSQL).

Run: ``.venv/bin/python bench/scifact_eval.py [--storage DIR] [--queries N] [--database-url URL]``.
Skips (exit 0) when the data is absent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path[:0] = [
    str(Path(__file__).resolve().parent.parent / "sdk"),
    str(Path(__file__).resolve().parent.parent),
]

from eval_data import baselines, ndcg_at_10, require_data, scifact  # noqa: E402

from sessionkit import AsyncSession  # noqa: E402
from sessionkit_server.common.db import Database  # noqa: E402
from sessionkit_server.knowledge.records import Scope  # noqa: E402
from sessionkit_server.knowledge.store import KnowledgeStore  # noqa: E402
from sessionkit_server.knowledge.tables import USER  # noqa: E402

APP = "scifact"
LIMIT = 30


async def run(
    storage: Path, query_limit: int | None, add: bool = True, with_baselines: bool = True
) -> tuple[dict[str, float], dict[str, object]]:
    data = scifact(require_data("scifact-train") / "scifact-train")
    files = storage / "files"
    files.mkdir(parents=True, exist_ok=True)
    for doc_id, content in data.corpus.items():
        path = files / f"{doc_id}.txt"
        if not path.exists():
            path.write_text(content, encoding="utf-8")
    session = AsyncSession(
        "scifact", user_id="bench", storage_path=storage / "data", app_name=APP, timeout=600
    )
    ids = list(data.corpus)
    start = time.perf_counter()

    def progress(p: dict[str, object]) -> None:
        done = int(str(p["files_done"]))
        if done % 500 == 0 and done:
            print(
                f"  added {done}/{len(ids)}, {done / (time.perf_counter() - start):.1f} files/s", flush=True
            )

    outcomes: dict[str, int] = {}
    if add:
        added = await session.add_knowledge(files, scope="user", on_progress=progress)
        outcomes = added["outcomes"]
    seconds_add = time.perf_counter() - start
    queries = list(data.queries.items())[:query_limit]
    figures: dict[str, list[float]] = {}
    latencies5: list[float] = []
    start = time.perf_counter()
    latencies: list[float] = []
    for qid, text in queries:
        began = time.perf_counter()
        hits = await session.search_knowledge(text, limit=LIMIT, scopes=["user"])
        latencies.append(1000 * (time.perf_counter() - began))
        began = time.perf_counter()
        await session.search_knowledge(text + " ", limit=5, scopes=["user"])
        latencies5.append(1000 * (time.perf_counter() - began))
        ranked: list[str] = []
        for hit in hits:  # a document ranks where its best chunk does
            doc = hit["source"]["name"].removesuffix(".txt")
            if doc not in ranked:
                ranked.append(doc)
        figures.setdefault("sessionkit search_knowledge (SDK)", []).append(
            ndcg_at_10(ranked, data.qrels[qid])
        )
    await session.close()
    url = (
        os.environ.get("SESSIONKIT_DATABASE_URL")
        or f"sqlite:///{next((storage / 'data').rglob('sessionkit.db'))}"
    )
    store_db = Database(url)
    store, scope = KnowledgeStore(store_db), Scope(USER, "bench", "")
    engine = "BM25 in SQL, PostgreSQL" if store_db.is_postgres else "FTS5 bm25, SQLite"
    for qid, text in queries:
        lexical = await store.lexical(APP, [scope], text, LIMIT)
        found = await store.current_chunks(APP, [scope], [chunk_id for chunk_id, _ in lexical])
        ranked: list[str] = []
        for chunk_id, _ in lexical:
            doc = found[chunk_id][1].name.removesuffix(".txt")
            if doc not in ranked:
                ranked.append(doc)
        figures.setdefault(f"store lexical only ({engine})", []).append(ndcg_at_10(ranked, data.qrels[qid]))
    await store_db.close()
    for name, rankings in (
        baselines([data.corpus[i] for i in ids], [t for _, t in queries]) if with_baselines else []
    ):
        for (qid, _), ranking in zip(queries, rankings, strict=True):
            figures.setdefault(name, []).append(ndcg_at_10([ids[i] for i in ranking], data.qrels[qid]))
    notes: dict[str, object] = {
        "files": len(ids),
        "add outcomes": outcomes,
        "seconds adding": round(seconds_add, 1),
        "files/s": round(len(ids) / seconds_add, 1) if add else None,
        "search ms p50, limit 30 (SDK, embedded)": round(statistics.median(latencies), 1),
        "search ms p50, limit 5 (SDK, embedded)": round(statistics.median(latencies5), 1),
        "queries": len(queries),
    }
    return {name: sum(v) / len(v) for name, v in figures.items()}, notes


from report import Recorder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", type=Path, help="keep the data directory here (reruns skip embedding)")
    parser.add_argument("--queries", type=int, help="only the first N queries")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--skip-add", action="store_true", help="search the --storage data as it is")
    parser.add_argument("--no-baselines", action="store_true", help="the SDK's figure only")
    parser.add_argument(
        "--database-url", help="run on this database (e.g. postgresql://user@host/db) instead of SQLite"
    )
    args = parser.parse_args()
    global APP
    if args.database_url:
        # As a user configures PostgreSQL: the embedded server reads it from its environment. An app
        # name per run keeps reruns on one database apart.
        os.environ["SESSIONKIT_DATABASE_URL"] = args.database_url
        APP = f"scifact-{uuid.uuid4().hex[:8]}"
    require_data("scifact-train")
    if args.storage:
        figures, notes = asyncio.run(
            run(args.storage, args.queries, not args.skip_add, not args.no_baselines)
        )
    else:
        with tempfile.TemporaryDirectory(prefix="sk-scifact-") as tmp:
            figures, notes = asyncio.run(run(Path(tmp), args.queries, True, not args.no_baselines))
    print("| method | nDCG@10 |\n|---|---|")
    for name, value in figures.items():
        print(f"| {name} | {value:.3f} |")
    for key, note in notes.items():
        print(f"- {key}: {note}")
    if args.json:
        args.json.write_text(json.dumps({"ndcg@10": figures, "notes": notes}, indent=2), encoding="utf-8")
    rec = Recorder(
        "scifact_eval_pg" if args.database_url else "scifact_eval",
        config={k: str(v) for k, v in notes.items()},
    )
    first, queries = next(iter(figures), None), int(str(notes.get("queries", 0)))
    for name, score in figures.items():  # for REPORT.md: nDCG@10, the first method as the baseline
        rec.value(f"{name} nDCG@10", score, n=queries, unit="nDCG@10",
                  baseline=None if name == first else f"{first} nDCG@10")  # fmt: skip
    rec.save()


if __name__ == "__main__":
    main()
