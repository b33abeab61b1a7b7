"""Rank fusion and the final retrieval score.

Reciprocal rank fusion (Cormack et al., 2009) over rankings r with weights w_r (1 unless given; the
memory service weights its lexical ranking 0.5, see docs/MEMORY.md)::

    rrf(d)      = sum over the rankings r that contain d of  w_r / (k + rank_r(d))    (rank from 1, k = 60)
    rrf_norm(d) = rrf(d) / (sum of w_r / (k + 1))   (1.0 = ranked first by every ranking; in [0, 1])

The final score of a result combines it with the item's quality and recency::

    recency(d)  = exp(-age_days(d) / half_life_days * ln 2)     (1.0 now, 0.5 after one half-life)
    score(d)    = w_relevance * rrf_norm(d) + w_quality * quality(d) + w_recency * recency(d)

with default weights w_relevance = 0.75, w_quality = 0.15, w_recency = 0.10. Quality is in [0, 1], so with
weights summing to 1 the score is in [0, 1] too.
"""

from __future__ import annotations

import math
from typing import NamedTuple

#: The RRF constant: larger values flatten the difference between the top ranks.
RRF_K = 60


class FusionWeights(NamedTuple):
    relevance: float = 0.75
    quality: float = 0.15
    recency: float = 0.10


DEFAULT_WEIGHTS = FusionWeights()


def _weights(rankings: list[list[str]], weights: list[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * len(rankings)
    if len(weights) != len(rankings) or any(w < 0 for w in weights):
        raise ValueError(f"need one weight >= 0 per ranking: {len(rankings)} rankings, weights {weights}")
    return list(weights)


def rrf(rankings: list[list[str]], k: int = RRF_K, weights: list[float] | None = None) -> dict[str, float]:
    """Reciprocal rank fusion: id -> sum of w / (k + rank) over the rankings that contain it (rank from
    1; a repeated id counts at its first position; ``weights`` one per ranking, default 1), ordered
    best first (ties: the best single rank, then the id)."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    scores: dict[str, float] = {}
    best_rank: dict[str, int] = {}
    for ranking, weight in zip(rankings, _weights(rankings, weights), strict=True):
        seen: set[str] = set()
        for rank, item in enumerate(ranking, start=1):
            if item in seen:
                continue
            seen.add(item)
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
            best_rank[item] = min(best_rank.get(item, rank), rank)
    ordered = sorted(scores, key=lambda item: (-scores[item], best_rank[item], item))
    return {item: scores[item] for item in ordered}


def best_rrf(n_rankings: int, k: int = RRF_K, weights: list[float] | None = None) -> float:
    """The largest possible RRF score over ``n_rankings`` (with these weights): first in every one."""
    total = float(n_rankings) if weights is None else sum(weights)
    return total / (k + 1)


def rrf_normalized(
    rankings: list[list[str]], k: int = RRF_K, weights: list[float] | None = None
) -> dict[str, float]:
    """:func:`rrf` divided by :func:`best_rrf` for these rankings and weights: each value in [0, 1]
    (an id found only by rankings of weight 0 scores 0)."""
    fused = rrf(rankings, k, weights)
    best = best_rrf(len(rankings), k, _weights(rankings, weights))
    if best == 0:
        return {item: 0.0 for item in fused}
    return {item: score / best for item, score in fused.items()}


def recency(age_days: float, half_life_days: float) -> float:
    """exp(-age_days / half_life_days * ln 2): 1.0 for now (or the future), 0.5 after one half-life."""
    if half_life_days <= 0:
        raise ValueError(f"half_life_days must be > 0, got {half_life_days}")
    return math.exp(-max(0.0, age_days) / half_life_days * math.log(2))


def fused_score(
    rrf_norm: float,
    quality: float,
    recency: float,
    weights: FusionWeights | tuple[float, float, float] = DEFAULT_WEIGHTS,
) -> float:
    """w_relevance * rrf_norm + w_quality * quality + w_recency * recency (weights in that order)."""
    w_relevance, w_quality, w_recency = weights
    return w_relevance * rrf_norm + w_quality * quality + w_recency * recency


def group_rankings(rankings: list[list[str]], group_of: dict[str, str]) -> list[list[str]]:
    """Each ranking of items read as a ranking of their groups: a group at the place of its first
    item, each group once (items with no group are left out)."""
    out: list[list[str]] = []
    for ranking in rankings:
        seen: dict[str, None] = {}
        for item in ranking:
            group = group_of.get(item)
            if group is not None and group not in seen:
                seen[group] = None
        out.append(list(seen))
    return out


def rrf_grouped(
    rankings: list[list[str]],
    group_of: dict[str, str],
    k: int = RRF_K,
    weights: list[float] | None = None,
) -> tuple[dict[str, float], set[str]]:
    """:func:`rrf_normalized` that ranks groups (a knowledge source) rather than their items (its
    chunks): each group's best item (the first of the group in the item-level fusion) scores the
    fusion of the rankings read at the group level (:func:`group_rankings`), its other items keep their
    item-level score. A document whose evidence the two rankings found in two different chunks (the
    dense one in one, the lexical one in the other) then counts as found by both, as a document of one
    chunk does; the other chunks of a long document are not lifted, so it does not fill the results.
    Returns (item -> score, best first; the items that scored their group's fusion)."""
    items = rrf_normalized(rankings, k, weights)
    groups = rrf_normalized(group_rankings(rankings, group_of), k, weights)
    scores: dict[str, float] = {}
    leaders: set[str] = set()
    led: set[str] = set()
    for item, value in items.items():
        group = group_of.get(item)
        if group is not None and group not in led:
            led.add(group)
            leaders.add(item)
            value = max(value, groups[group])
        scores[item] = value
    order = {item: n for n, item in enumerate(items)}  # ties: the item-level order
    ranked = sorted(scores, key=lambda item: (-scores[item], order[item]))
    return {item: scores[item] for item in ranked}, leaders
