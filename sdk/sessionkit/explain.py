"""A search hit's explanation (sessionkit.v1.SearchExplanation) as the dict the SDK and the gateway
return under a hit's "explanation" key when a search is asked to explain (docs/MEMORY.md)."""

from __future__ import annotations

from typing import Any

from sessionkit.errors import FieldViolation, InvalidArgument
from sessionkit.v1 import common_pb2


def check_explain(value: object) -> bool:
    """``explain`` as given, refused unless a bool (a truthy "no" must not turn explanations on)."""
    if not isinstance(value, bool):
        raise InvalidArgument(
            "invalid explain",
            violations=[FieldViolation("explain", f"must be True or False, not {type(value).__name__}")],
        )
    return value


def _rank(message: common_pb2.SearchExplanation, name: str) -> dict[str, Any] | None:
    if not message.HasField(name):  # type: ignore[arg-type]
        return None  # that retriever did not return the item among its candidates
    ranked: common_pb2.RetrieverRank = getattr(message, name)
    return {"rank": ranked.rank, "score": ranked.score}


def explanation_dict(message: common_pb2.SearchExplanation) -> dict[str, Any]:
    """{"dense": {"rank", "score"} | None, "lexical": ... | None, "relevance", "quality", "recency"
    (None for knowledge), "weights": {"relevance", "quality", "recency"}, "score", "fusion": {"k",
    "dense_weight", "lexical_weight"}}: relevance = (dense_weight / (k + dense rank) + lexical_weight /
    (k + lexical rank)) / ((dense_weight + lexical_weight) / (k + 1)), a missing ranking adding 0."""
    return {
        "dense": _rank(message, "dense"),
        "lexical": _rank(message, "lexical"),
        "relevance": message.relevance,
        "quality": message.quality if message.HasField("quality") else None,
        "recency": message.recency if message.HasField("recency") else None,
        "weights": {
            "relevance": message.weights.relevance,
            "quality": message.weights.quality,
            "recency": message.weights.recency,
        },
        "score": message.score,
        "fusion": {
            "k": message.fusion.k,
            "dense_weight": message.fusion.dense_weight,
            "lexical_weight": message.fusion.lexical_weight,
        },
    }
