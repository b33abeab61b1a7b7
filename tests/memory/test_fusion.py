"""The retrieval layer: rank fusion."""

from __future__ import annotations

import pytest

from sessionkit_server.retrieval.fusion import (
    FusionWeights,
    best_rrf,
    fused_score,
    recency,
    rrf,
    rrf_normalized,
)

# -- fusion ----------------------------------------------------------------------------------------------


def test_rrf_orders_by_summed_reciprocal_rank() -> None:
    fused = rrf([["a", "b", "c"], ["b", "a", "d"], ["b"]])
    assert list(fused) == ["b", "a", "c", "d"]
    assert fused["b"] == pytest.approx(1 / 62 + 1 / 61 + 1 / 61)
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["c"] == fused["d"] == pytest.approx(1 / 63)
    # Ties: the best single rank, then the id.
    assert list(rrf([["x", "y"], ["y", "x"]])) == ["x", "y"]
    assert list(rrf([["z", "q"], ["y"]])) == ["y", "z", "q"]
    # A repeated id counts once, at its first position; empty input gives nothing.
    assert rrf([["a", "a", "b"]]) == {"a": pytest.approx(1 / 61), "b": pytest.approx(1 / 63)}
    assert rrf([]) == {} and rrf([[], []]) == {}
    assert rrf([["a"]], k=0) == {"a": 1.0}


def test_normalized_rrf_and_the_final_score() -> None:
    assert best_rrf(2) == pytest.approx(2 / 61)
    normalized = rrf_normalized([["a", "b"], ["a", "c"]])
    assert normalized["a"] == pytest.approx(1.0)
    assert normalized["b"] == pytest.approx((1 / 62) / (2 / 61))
    assert recency(0, 30) == 1.0
    assert recency(30, 30) == pytest.approx(0.5)
    assert recency(60, 30) == pytest.approx(0.25)
    assert recency(-5, 30) == 1.0  # clock skew: never above 1
    assert fused_score(1.0, 1.0, 1.0) == pytest.approx(1.0)
    assert fused_score(0.8, 0.5, 0.25) == pytest.approx(0.75 * 0.8 + 0.15 * 0.5 + 0.10 * 0.25)
    assert fused_score(0.8, 0.5, 0.25, (1.0, 0.0, 0.0)) == pytest.approx(0.8)
    assert fused_score(
        0.8, 0.5, 0.25, FusionWeights(relevance=0.5, quality=0.5, recency=0.0)
    ) == pytest.approx(0.65)
    # A fresher, better item outranks an equally relevant stale one.
    assert fused_score(0.6, 0.9, recency(1, 30)) > fused_score(0.6, 0.9, recency(90, 30))


def test_weighted_rrf_discounts_a_ranking() -> None:
    # The memory service weights its lexical ranking 0.5: the item first by meaning (10th lexically)
    # then beats one 8th by meaning that is first lexically, which equal weights rank first.
    dense = ["answer"] + [f"d{n}" for n in range(6)] + ["keyword"]
    lexical = ["keyword"] + [f"l{n}" for n in range(8)] + ["answer"]
    equal = rrf_normalized([dense, lexical])
    weighted = rrf_normalized([dense, lexical], weights=[1.0, 0.5])
    assert next(iter(equal)) == "keyword"
    assert next(iter(weighted)) == "answer"
    assert weighted["answer"] == pytest.approx((1 / 61 + 0.5 / 70) / (1.5 / 61))
    assert rrf_normalized([["a"], ["a"]], weights=[1.0, 0.5])["a"] == pytest.approx(1.0)
    assert best_rrf(2, weights=[1.0, 0.5]) == pytest.approx(1.5 / 61)
    assert rrf([["a"], ["b"]], weights=[1.0, 0.0])["b"] == 0.0
    with pytest.raises(ValueError):
        rrf([["a"], ["b"]], weights=[1.0])
    with pytest.raises(ValueError):
        rrf([["a"]], weights=[-1.0])
