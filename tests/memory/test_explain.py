"""The explanation record (sessionkit_server.retrieval.explain): places in each ranking as the fusion
counts them, and its gRPC form with unset rankings and terms left unset."""

from __future__ import annotations

from sessionkit.explain import explanation_dict
from sessionkit_server.retrieval.explain import Explainer, Ranked, RankFusion, explanation_message
from sessionkit_server.retrieval.fusion import FusionWeights

FUSION = RankFusion(10, 1.0, 0.5)


def test_ranks_are_first_places_and_a_missing_ranking_is_none() -> None:
    # A repeated id (two partitions) counts at its first place, as rrf() counts it.
    explainer = Explainer([("a", 0.9), ("b", 0.8), ("a", 0.1)], [("b", 7.0), ("c", 2.0)], FUSION)
    a = explainer.explain("a", 0.7, 0.8, FusionWeights(), 0.5, 1.0)
    assert a.dense == Ranked(1, 0.9) and a.lexical is None
    assert explainer.explain("b", 1.0, 1.0).dense == Ranked(2, 0.8)
    assert explainer.explain("b", 1.0, 1.0).lexical == Ranked(1, 7.0)
    c = explainer.explain("c", 0.3, 0.3)
    assert c.dense is None and c.lexical == Ranked(2, 2.0)
    assert explainer.explain("z", 0.0, 0.0).dense is None


def test_the_message_round_trips_and_leaves_absent_parts_unset() -> None:
    explainer = Explainer([("a", 0.9)], [("c", 2.0)], FUSION)
    memory = explanation_message(explainer.explain("a", 0.6, 0.7, FusionWeights(), 0.5, 0.25))
    assert not memory.HasField("lexical") and memory.HasField("quality")
    assert explanation_dict(memory) == {
        "dense": {"rank": 1, "score": 0.9},
        "lexical": None,
        "relevance": 0.6,
        "quality": 0.5,
        "recency": 0.25,
        "weights": {"relevance": 0.75, "quality": 0.15, "recency": 0.10},
        "score": 0.7,
        "fusion": {"k": 10, "dense_weight": 1.0, "lexical_weight": 0.5},
    }
    chunk = explanation_message(explainer.explain("c", 0.3, 0.3))
    assert not chunk.HasField("dense") and not chunk.HasField("quality") and not chunk.HasField("recency")
    assert explanation_dict(chunk)["weights"] == {"relevance": 1.0, "quality": 0.0, "recency": 0.0}
