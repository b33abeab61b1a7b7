"""Rank fusion and the final retrieval score.

Reciprocal rank fusion (Cormack et al., 2009) over ``n`` rankings (e.g. dense cosine and lexical)::

    rrf(d)      = sum over the rankings r that contain d of  1 / (k + rank_r(d))      (rank from 1, k = 60)
    rrf_norm(d) = rrf(d) / (n / (k + 1))            (1.0 = ranked first by every ranking; in [0, 1])

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


def rrf(rankings: list[list[str]], k: int = RRF_K) -> dict[str, float]:
    """Reciprocal rank fusion: id -> sum of 1 / (k + rank) over the rankings that contain it (rank from
    1; a repeated id counts at its first position), ordered best first (ties: the best single rank,
    then the id)."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    scores: dict[str, float] = {}
    best_rank: dict[str, int] = {}
    for ranking in rankings:
        seen: set[str] = set()
        for rank, item in enumerate(ranking, start=1):
            if item in seen:
                continue
            seen.add(item)
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
            best_rank[item] = min(best_rank.get(item, rank), rank)
    ordered = sorted(scores, key=lambda item: (-scores[item], best_rank[item], item))
    return {item: scores[item] for item in ordered}


def best_rrf(n_rankings: int, k: int = RRF_K) -> float:
    """The largest possible RRF score over ``n_rankings``: first in every one."""
    return n_rankings / (k + 1)


def rrf_normalized(rankings: list[list[str]], k: int = RRF_K) -> dict[str, float]:
    """:func:`rrf` divided by :func:`best_rrf` for these rankings: each value in (0, 1]."""
    fused = rrf(rankings, k)
    best = best_rrf(len(rankings), k)
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
