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
