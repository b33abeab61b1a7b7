"""Why a search hit scored what it did: the record a search builds, only when asked (``explain``), from
the two rankings it fused and the terms of the final score (sessionkit_server.retrieval.fusion).

A ranking that did not return the item among its candidates (the best ``max(4 * limit, 40)``) has no
entry: that is what "found only lexically" or "missed by the embedding" looks like."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from sessionkit.v1 import common_pb2
from sessionkit_server.retrieval.fusion import FusionWeights


class Ranked(NamedTuple):
    """An item's place in one retriever's ranking."""

    #: 1-based position among the retriever's candidates, before any filter.
    rank: int
    #: The retriever's own score: cosine similarity (dense) or the lexical index's relevance (>= 0).
    score: float


class RankFusion(NamedTuple):
    """How a search fused its two rankings: relevance = (dense_weight / (k + dense rank) +
    lexical_weight / (k + lexical rank)) / ((dense_weight + lexical_weight) / (k + 1))."""

    k: int
    dense_weight: float
    lexical_weight: float


@dataclass(frozen=True, slots=True)
class Explanation:
    dense: Ranked | None
    lexical: Ranked | None
    #: The fused relevance in [0, 1] (normalized reciprocal-rank fusion of the two rankings).
    relevance: float
    #: None where the results have no such term (knowledge chunks have neither quality nor recency).
    quality: float | None
    recency: float | None
    #: score = relevance * weights.relevance + quality * weights.quality + recency * weights.recency
    #: (an absent term counts 0).
    weights: FusionWeights
    score: float
    fusion: RankFusion


#: Knowledge chunks are ranked by relevance alone.
RELEVANCE_ONLY = FusionWeights(1.0, 0.0, 0.0)


def _places(ranking: list[tuple[str, float]]) -> dict[str, int]:
    """id -> its 0-based index in a best-first ranking; a repeated id keeps its first place, as the
    fusion counts it (the reversed walk lets the first occurrence overwrite the later ones)."""
    return {item: index for index, (item, _) in reversed(list(enumerate(ranking)))}


class Explainer:
    """The two rankings of one search, indexed once, so each hit's explanation is two lookups (only
    the hits returned get a record: the index is plain ints)."""

    __slots__ = ("_dense", "_dense_at", "_fusion", "_lexical", "_lexical_at")

    def __init__(
        self, dense: list[tuple[str, float]], lexical: list[tuple[str, float]], fusion: RankFusion
    ) -> None:
        self._dense, self._lexical, self._fusion = dense, lexical, fusion
        self._dense_at, self._lexical_at = _places(dense), _places(lexical)

    @staticmethod
    def _ranked(ranking: list[tuple[str, float]], at: dict[str, int], item: str) -> Ranked | None:
        index = at.get(item)
        return None if index is None else Ranked(index + 1, ranking[index][1])

    def explain(
        self,
        item: str,
        relevance: float,
        score: float,
        weights: FusionWeights = RELEVANCE_ONLY,
        quality: float | None = None,
        recency: float | None = None,
    ) -> Explanation:
        return Explanation(
            self._ranked(self._dense, self._dense_at, item),
            self._ranked(self._lexical, self._lexical_at, item),
            relevance,
            quality,
            recency,
            weights,
            score,
            self._fusion,
        )


def _rank_message(ranked: Ranked | None) -> common_pb2.RetrieverRank | None:
    return None if ranked is None else common_pb2.RetrieverRank(rank=ranked.rank, score=ranked.score)


def explanation_message(why: Explanation) -> common_pb2.SearchExplanation:
    """The gRPC form (sessionkit.v1.SearchExplanation) shared by SearchMemories and SearchKnowledge; a
    ranking or term that is None stays unset."""
    return common_pb2.SearchExplanation(
        dense=_rank_message(why.dense),
        lexical=_rank_message(why.lexical),
        relevance=why.relevance,
        quality=why.quality,
        recency=why.recency,
        weights=common_pb2.ScoreWeights(
            relevance=why.weights.relevance, quality=why.weights.quality, recency=why.weights.recency
        ),
        score=why.score,
        fusion=common_pb2.RankFusion(
            k=why.fusion.k, dense_weight=why.fusion.dense_weight, lexical_weight=why.fusion.lexical_weight
        ),
    )
