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


#: Knowledge chunks are ranked by relevance alone.
RELEVANCE_ONLY = FusionWeights(1.0, 0.0, 0.0)


def positions(ranking: list[tuple[str, float]]) -> dict[str, Ranked]:
    """id -> (rank from 1, score) in a best-first ranking; a repeated id keeps its first place, as
    the fusion counts it."""
    out: dict[str, Ranked] = {}
    for rank, (item, score) in enumerate(ranking, start=1):
        out.setdefault(item, Ranked(rank, score))
    return out


class Explainer:
    """The two rankings of one search, indexed once, so each hit's explanation is two lookups."""

    __slots__ = ("dense", "lexical")

    def __init__(self, dense: list[tuple[str, float]], lexical: list[tuple[str, float]]) -> None:
        self.dense = positions(dense)
        self.lexical = positions(lexical)

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
            self.dense.get(item), self.lexical.get(item), relevance, quality, recency, weights, score
        )


def explanation_message(why: Explanation) -> common_pb2.SearchExplanation:
    """The gRPC form (sessionkit.v1.SearchExplanation) shared by SearchMemories and SearchKnowledge."""
    message = common_pb2.SearchExplanation(
        relevance=why.relevance,
        quality=why.quality,
        recency=why.recency,
        weights=common_pb2.ScoreWeights(
            relevance=why.weights.relevance, quality=why.weights.quality, recency=why.weights.recency
        ),
        score=why.score,
    )
    if why.dense is not None:
        message.dense.CopyFrom(common_pb2.RetrieverRank(rank=why.dense.rank, score=why.dense.score))
    if why.lexical is not None:
        message.lexical.CopyFrom(common_pb2.RetrieverRank(rank=why.lexical.rank, score=why.lexical.score))
    return message
