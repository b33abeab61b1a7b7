"""Conversation-aware memory ideas (issue 13 item 4), each measured alone on LoCoMo dev on top of the
memory service's ranking, offline (no server), with the data README's metric (recall@5/@10, per
category).

The service's ranking is rebuilt in this process as bench/fit_fusion.py rebuilds it: dense cosine of the
packaged all-MiniLM-L6-v2 (exact), the memory store's SQLite FTS5 query (each turn indexed with the
previous turn of its session, migration m0005), each 40 deep (the service's depth for a search of 10),
fused by RRF with the service's settings (lexical weight 1, k 10). Each idea changes one thing:

- ``adjacent``: returning adjacent turns. After each of the first hits, the turn after it (or before
  it) in the same session is returned too, when not already in the list (the list is then cut at 10).
- ``neighbour score``: a turn's fused score plus ``g`` times the best fused score of its two
  neighbours in the session (evidence split over neighbouring turns lifts both).
- ``relative dates``: each turn's stored text gets the absolute date of its relative date words
  ("yesterday" -> "yesterday (7 May 2023)", "last week" -> "last week (the week before 8 May 2023)",
  "last month"/"next month"/"last year"...), computed from its session's date; re-embedded and
  re-indexed.
- ``question dates``: a question that names a month (and year) or a day boosts the turns whose session
  date falls in that month or within a week after that day (events are told a few days later); the
  boost is ``b`` added to the fused score (in [0, 1]).

Run: ``.venv/bin/python bench/locomo_ideas.py [--cache /tmp/fit-cache.pkl]`` (the cache is
bench/fit_fusion.py's: embeddings of the texts, kept between runs).
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import sys
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "sdk"), str(ROOT)]

import fit_fusion  # noqa: E402
from eval_data import Conversation, RecallTable, locomo, require_data  # noqa: E402

from sessionkit_server.memory.base import MemorySettings  # noqa: E402
from sessionkit_server.retrieval.fusion import rrf_normalized  # noqa: E402

DEPTH = 40
LIMIT = 10
MONTHS = [
    "january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
    "november", "december",
]  # fmt: skip


def session_day(text: str) -> date:
    """'1:56 pm on 8 May, 2023' -> 2023-05-08."""
    return datetime.strptime(text.split(" on ", 1)[1].strip(), "%d %B, %Y").date()


def fmt(day: date) -> str:
    return f"{day.day} {day.strftime('%B')} {day.year}"


def month_name(day: date) -> str:
    return f"{day.strftime('%B')} {day.year}"


def add_month(day: date, n: int) -> date:
    m = day.month - 1 + n
    return date(day.year + m // 12, m % 12 + 1, 1)


RELATIVE: list[tuple[str, Callable[[date], str]]] = [
    (r"\byesterday\b", lambda d: fmt(d - timedelta(days=1))),
    (r"\b(today|tonight|this morning|this evening|this afternoon)\b", fmt),
    (r"\btomorrow\b", lambda d: fmt(d + timedelta(days=1))),
    (r"\blast (week|weekend)\b", lambda d: f"the week before {fmt(d)}"),
    (r"\bnext (week|weekend)\b", lambda d: f"the week after {fmt(d)}"),
    (r"\blast month\b", lambda d: month_name(add_month(d, -1))),
    (r"\b(this month)\b", month_name),
    (r"\bnext month\b", lambda d: month_name(add_month(d, 1))),
    (r"\blast year\b", lambda d: str(d.year - 1)),
    (r"\bthis year\b", lambda d: str(d.year)),
    (r"\bnext year\b", lambda d: str(d.year + 1)),
    (r"\b(a few|few|two|three|couple of) days ago\b", lambda d: f"a few days before {fmt(d)}"),
    (r"\b(a few|two|three|couple of) weeks ago\b", lambda d: f"a few weeks before {fmt(d)}"),
    (r"\blast (monday|tuesday|wednesday|thursday|friday|saturday|sunday)\b",
     lambda d: f"the week before {fmt(d)}"),
]  # fmt: skip


def with_dates(text: str, day: date) -> str:
    """``text`` with each relative date expression followed by its absolute date in parentheses."""
    for pattern, absolute in RELATIVE:
        when = absolute(day)

        def annotate(m: re.Match[str], when: str = when) -> str:
            return f"{m.group(0)} ({when})"

        text = re.sub(pattern, annotate, text, flags=re.IGNORECASE)
    return text


DAY_PATTERNS = [
    re.compile(r"\b(\d{1,2}) (" + "|".join(MONTHS) + r"),? (\d{4})\b", re.I),
    re.compile(r"\b(" + "|".join(MONTHS) + r") (\d{1,2}),? (\d{4})\b", re.I),
]
MONTH_PATTERN = re.compile(r"\b(" + "|".join(MONTHS) + r")(?: (\d{4}))?\b", re.I)


def question_window(question: str) -> Callable[[date], bool] | None:
    """When the question names a day or a month, the test of a session date against it."""
    for n, pattern in enumerate(DAY_PATTERNS):
        m = pattern.search(question)
        if m:
            day_s, month_s, year_s = (
                (m.group(1), m.group(2), m.group(3)) if n == 0 else (m.group(2), m.group(1), m.group(3))
            )
            day = date(int(year_s), MONTHS.index(month_s.lower()) + 1, int(day_s))
            return lambda d, day=day: day <= d <= day + timedelta(days=7)  # type: ignore[misc]
    m = MONTH_PATTERN.search(question)
    if m and (m.group(2) or m.group(1).lower() != "may"):  # "may" alone is a verb
        month = MONTHS.index(m.group(1).lower()) + 1
        year = int(m.group(2)) if m.group(2) else None
        return lambda d: d.month == month and (year is None or d.year == year)
    return None


class Conv:
    def __init__(self, conv: Conversation, dated: bool = False) -> None:
        self.conv = conv
        self.days = [session_day(t.date) for t in conv.turns]
        self.texts = [
            with_dates(t.memory_text(), d) if dated else t.memory_text()
            for t, d in zip(conv.turns, self.days, strict=True)
        ]
        self.contexts = [
            self.texts[i - 1] if i and conv.turns[i - 1].session == t.session else ""
            for i, t in enumerate(conv.turns)
        ]
        queries = [q.text for q in conv.questions]
        self.dense = fit_fusion.dense_rankings(self.texts, queries)
        self.lexical = fit_fusion.lexical_rankings(self.texts, self.contexts, queries)

    def neighbours(self, i: int) -> list[int]:
        turns = self.conv.turns
        return [j for j in (i - 1, i + 1) if 0 <= j < len(turns) and turns[j].session == turns[i].session]

    def fused(self, n: int) -> dict[int, float]:
        s = MemorySettings()
        named = rrf_normalized(
            [[str(i) for i in self.dense[n]], [str(i) for i in self.lexical[n]]],
            k=s.rrf_k,
            weights=[1.0, s.weight_lexical_rank],
        )
        return {int(i): v for i, v in named.items()}


Ranker = Callable[[Conv, int], list[int]]


def service(c: Conv, n: int) -> list[int]:
    return list(c.fused(n))[:LIMIT]


def adjacent(after: bool, first: int) -> Ranker:
    def rank(c: Conv, n: int) -> list[int]:
        out: list[int] = []
        for position, i in enumerate(c.fused(n)):
            if i not in out:
                out.append(i)
            if position < first:
                turns = c.conv.turns
                j = i + 1 if after else i - 1
                if 0 <= j < len(turns) and turns[j].session == turns[i].session and j not in out:
                    out.append(j)
        return out[:LIMIT]

    return rank


def neighbour_score(g: float, dates: float = 0.0) -> Ranker:
    def rank(c: Conv, n: int) -> list[int]:
        fused = c.fused(n)
        inside = question_window(c.conv.questions[n].text) if dates else None
        if inside is not None:
            fused = {i: v + (dates if inside(c.days[i]) else 0.0) for i, v in fused.items()}
        score = {
            i: v + g * max((fused.get(j, 0.0) for j in c.neighbours(i)), default=0.0)
            for i, v in fused.items()
        }
        for i, v in fused.items():  # a neighbour of a hit that no retriever found
            for j in c.neighbours(i):
                score.setdefault(j, g * v)
        return sorted(score, key=lambda i: -score[i])[:LIMIT]

    return rank


def question_dates(b: float) -> Ranker:
    def rank(c: Conv, n: int) -> list[int]:
        fused = c.fused(n)
        inside = question_window(c.conv.questions[n].text)
        if inside is None:
            return list(fused)[:LIMIT]
        score = {i: v + (b if inside(c.days[i]) else 0.0) for i, v in fused.items()}
        return sorted(score, key=lambda i: -score[i])[:LIMIT]

    return rank


def measure(convs: Sequence[Conv], rankers: dict[str, Ranker], table: RecallTable) -> None:
    for name, ranker in rankers.items():
        for c in convs:
            for n, q in enumerate(c.conv.questions):
                table.add(name, q, [{c.conv.turns[i].dia_id} for i in ranker(c, n)])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--cache", type=Path, help="bench/fit_fusion.py's embedding cache")
    args = parser.parse_args()
    if args.cache and args.cache.exists():
        fit_fusion._cache.update(pickle.loads(args.cache.read_bytes()))
    fit_fusion.DEPTH = DEPTH
    raw = locomo(require_data("locomo-dev.json") / "locomo-dev.json")
    plain = [Conv(c) for c in raw]
    table = RecallTable()
    measure(
        plain,
        {
            "the service (lexical weight 1, k 10, previous turn as lexical context)": service,
            "adjacent: next turn after each of the top 3": adjacent(True, 3),
            "adjacent: next turn after each of the top 5": adjacent(True, 5),
            "adjacent: previous turn before each of the top 3": adjacent(False, 3),
            "neighbour score g 0.25": neighbour_score(0.25),
            "neighbour score g 0.5": neighbour_score(0.5),
            "neighbour score g 0.75": neighbour_score(0.75),
            "neighbour score g 1.0": neighbour_score(1.0),
            "neighbour score g 0.5 + question dates b 0.3": neighbour_score(0.5, 0.3),
            "question dates b 0.1": question_dates(0.1),
            "question dates b 0.3": question_dates(0.3),
        },
        table,
    )
    dated = [Conv(c, dated=True) for c in raw]
    changed = sum(
        a != b for c, d in zip(plain, dated, strict=True) for a, b in zip(c.texts, d.texts, strict=True)
    )
    measure(dated, {f"relative dates made absolute ({changed} turns changed)": service}, table)
    if args.cache:
        tmp = args.cache.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(fit_fusion._cache))
        os.replace(tmp, args.cache)
    asked = sum(question_window(q.text) is not None for c in raw for q in c.questions)
    print(f"questions naming a day or a month: {asked}")
    print(table.markdown())


if __name__ == "__main__":
    main()
