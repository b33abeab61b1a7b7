"""search_memory(..., explain=True) and search_knowledge(..., explain=True) through the SDK over gRPC (what
the embedded Session uses) and over the gateway's REST API (the remote Session, and raw HTTP), against the
package's real servers (tests/sdk/conftest.py): each hit says where each ranking put it, the fused
relevance, the quality and recency terms, and a score that is the documented formula of them.

The data is built so that each kind of hit occurs: 50 low-quality memories about drinks fill the dense
ranking's 40 candidates and the search filters them out (min_quality, or source_names for knowledge),
leaving a fact that only the lexical ranking finds ("favourite" number: no drink), one only the embedding
finds (tea: no query word) and one both find."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sessionkit import Session
from sessionkit.errors import InvalidArgument
from sessionkit_server.knowledge.base import KnowledgeSettings
from sessionkit_server.memory.base import MemorySettings
from tests.gateway.test_gateway_support import GatewayThread
from tests.servers import ServerThread

USER, SESSION = "explainer", "explain-1"
QUERY = "favourite beverage"
LEXICAL_ONLY = "My favourite number is seven."
DENSE_ONLY = "The drink Ann loves most is green tea."
BOTH = "Ann's favourite beverage is cold brew coffee."
DRINKS = ["espresso", "lemonade", "mint tea", "hot chocolate", "orange juice", "iced coffee", "cider",
          "sparkling water", "chai latte", "ginger ale"]  # fmt: skip
#: Memories: each template's drinks differ enough not to be merged as near-duplicates.
TEMPLATES = ["Bob drank {} at the station.", "Carol ordered {} during lunch.",
             "Dan brewed {} for his guests.", "Eve spilled {} on her laptop.",
             "Frank bought {} at the market."]  # fmt: skip
MEMORIES = [template.format(drink) for template in TEMPLATES for drink in DRINKS]
#: Knowledge: one chunk each (CHUNKER packs sentences up to 16 tokens).
PLACES = ["the station", "a cafe", "the office", "a bar", "the park"]
CHUNKS = [f"Bob drank {drink} at {place} with friends last weekend." for drink in DRINKS for place in PLACES]
FACTS = ["fact-0", "fact-1", "fact-2"]
CHUNKER = {"type": "sentence", "chunk_size": 16, "chunk_overlap": 0}


@pytest.fixture(scope="module")
def grpc_session(services: ServerThread) -> Iterator[Session]:
    """The memories and knowledge, written once over gRPC; every test reads them."""
    with Session(
        session_id=SESSION,
        user_id=USER,
        address=services.address,
        knowledge_config={"chunker": CHUNKER},
    ) as session:
        session.add_memories([{"text": t, "quality_score": 0.1} for t in MEMORIES])
        # The dense-only fact first: a memory's lexical index holds the session's previous memory too
        # (docs/MEMORY.md), and the one before it names no query word.
        session.add_memories([{"text": t, "quality_score": 0.9} for t in (DENSE_ONLY, LEXICAL_ONLY, BOTH)])
        session.add_knowledge(" ".join(CHUNKS), name="drinks")
        for i, fact in enumerate((LEXICAL_ONLY, DENSE_ONLY, BOTH)):  # a chunk each
            session.add_knowledge(fact, name=f"fact-{i}")
        yield session


@pytest.fixture(scope="module")
def rest_session(gateway: GatewayThread, grpc_session: Session) -> Iterator[Session]:
    with Session(session_id=SESSION, user_id=USER, agent_url=f"{gateway.url}/agent") as session:
        yield session


@pytest.fixture(params=["grpc", "rest"])
def session(request: pytest.FixtureRequest) -> Session:
    found: Session = request.getfixturevalue(f"{request.param}_session")
    return found


def _relevance(why: dict[str, Any]) -> float:
    """docs/MEMORY.md: normalized weighted reciprocal-rank fusion of the two ranks, from the constant
    and weights the explanation reports."""
    k, dense_weight, lexical_weight = (why["fusion"][key] for key in ("k", "dense_weight", "lexical_weight"))
    total = 0.0
    if why["dense"] is not None:
        total += dense_weight / (k + why["dense"]["rank"])
    if why["lexical"] is not None:
        total += lexical_weight / (k + why["lexical"]["rank"])
    return float(total / ((dense_weight + lexical_weight) / (k + 1)))


def _check_consistent(hits: list[dict[str, Any]], lexical_weight: float, k: int) -> None:
    for hit in hits:
        why = hit["explanation"]
        w = why["weights"]
        formula = w["relevance"] * why["relevance"]
        formula += w["quality"] * (why["quality"] or 0.0) + w["recency"] * (why["recency"] or 0.0)
        assert why["score"] == pytest.approx(hit["score"]) == pytest.approx(formula), hit
        # The explanation reports the service's fusion settings, and they reproduce the relevance.
        assert why["fusion"] == pytest.approx({"k": k, "dense_weight": 1.0, "lexical_weight": lexical_weight})
        assert why["relevance"] == pytest.approx(_relevance(why)), hit
        # The hit's score components agree: a ranking that did not find it contributed nothing.
        assert (why["dense"] is None) == (hit["scores"]["semantic"] == 0.0) or why["dense"]["score"] <= 0
        assert (why["lexical"] is None) == (hit["scores"]["lexical"] == 0.0), hit
    # Within one ranking, a better rank never has a lower score, and no two hits share a rank.
    for ranking in ("dense", "lexical"):
        placed = sorted(
            (h["explanation"][ranking]["rank"], h["explanation"][ranking]["score"])
            for h in hits
            if h["explanation"][ranking] is not None
        )
        assert len({rank for rank, _ in placed}) == len(placed), placed
        scores = [score for _, score in placed]
        assert scores == sorted(scores, reverse=True), placed
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_memory_search_explains_each_hit(session: Session) -> None:
    hits = session.search_memory(QUERY, limit=5, min_quality=0.5, explain=True)
    by_text = {h["text"]: h["explanation"] for h in hits}
    assert set(by_text) == {LEXICAL_ONLY, DENSE_ONLY, BOTH}, by_text
    # 50 drinks fill the embedding's 40 candidates: the number is missed by it, found by its word.
    assert by_text[LEXICAL_ONLY]["dense"] is None and by_text[LEXICAL_ONLY]["lexical"] is not None
    assert by_text[DENSE_ONLY]["lexical"] is None and by_text[DENSE_ONLY]["dense"] is not None
    assert by_text[BOTH]["dense"] is not None and by_text[BOTH]["lexical"]["rank"] == 1
    # A rank is a place among the retriever's candidates (at most 40 here).
    assert all(1 <= why[r]["rank"] <= 40 for why in by_text.values() for r in ("dense", "lexical") if why[r])
    for hit in hits:
        why = hit["explanation"]
        assert why["quality"] == hit["quality_score"] == 0.9
        assert why["recency"] == pytest.approx(hit["scores"]["recency"]) and 0.99 < why["recency"] <= 1.0
        assert why["weights"] == pytest.approx({"relevance": 0.75, "quality": 0.15, "recency": 0.10})
    _check_consistent(hits, MemorySettings().weight_lexical_rank, MemorySettings().rrf_k)


def test_knowledge_search_explains_each_hit(session: Session) -> None:
    hits = session.search_knowledge(QUERY, limit=5, source_names=FACTS, explain=True)
    by_text = {h["text"]: h["explanation"] for h in hits}
    assert set(by_text) == {LEXICAL_ONLY, DENSE_ONLY, BOTH}, by_text
    assert by_text[LEXICAL_ONLY]["dense"] is None and by_text[LEXICAL_ONLY]["lexical"] is not None
    assert by_text[DENSE_ONLY]["lexical"] is None and by_text[DENSE_ONLY]["dense"] is not None
    assert by_text[BOTH]["dense"] is not None and by_text[BOTH]["lexical"] is not None
    for why in by_text.values():  # chunks have no quality or recency: the score is the relevance
        assert why["quality"] is None and why["recency"] is None
        assert why["weights"] == {"relevance": 1.0, "quality": 0.0, "recency": 0.0}
    _check_consistent(hits, KnowledgeSettings().weight_lexical_rank, KnowledgeSettings().rrf_k)


def test_without_explain_no_hit_has_an_explanation(session: Session) -> None:
    memories = session.search_memory(QUERY, limit=5, min_quality=0.5)
    chunks = session.search_knowledge(QUERY, limit=5, source_names=FACTS)
    assert len(memories) == len(chunks) == 3
    assert all("explanation" not in hit for hit in memories + chunks)
    # Explaining changes nothing but the explanation (recency, hence the score, moves with the clock).
    explained = session.search_memory(QUERY, limit=5, min_quality=0.5, explain=True)
    assert [(h["id"], pytest.approx(h["score"], abs=1e-6)) for h in explained] == [
        (h["id"], h["score"]) for h in memories
    ]
    assert set(explained[0]) - set(memories[0]) == {"explanation"}


def test_explain_must_be_a_bool(session: Session) -> None:
    with pytest.raises(InvalidArgument) as caught:
        session.search_memory(QUERY, explain="yes")  # type: ignore[arg-type]
    assert caught.value.violations[0].field == "explain"
    with pytest.raises(InvalidArgument):
        session.search_knowledge(QUERY, explain=1)  # type: ignore[arg-type]


def test_rest_answers_explanations_only_when_asked(gateway: GatewayThread, grpc_session: Session) -> None:
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        base = f"/v1/sessions/{SESSION}"
        for path, body in (
            ("memories/search", {"query": QUERY, "min_quality": 0.5}),
            ("knowledge/search", {"query": QUERY, "source_names": FACTS}),
        ):
            plain = http.post(f"{base}/{path}?user_id={USER}", json=body)
            assert plain.status_code == 200, plain.text
            assert plain.json()["hits"] and all("explanation" not in h for h in plain.json()["hits"])
            explained = http.post(f"{base}/{path}?user_id={USER}", json={**body, "explain": True}).json()
            assert all(h["explanation"]["score"] == h["score"] for h in explained["hits"])
            for bad in ("yes", 1, None, {"on": True}):
                refused = http.post(f"{base}/{path}?user_id={USER}", json={**body, "explain": bad})
                assert refused.status_code == 400, (bad, refused.text)
                error = refused.json()["error"]
                assert error["status"] == "INVALID_ARGUMENT"
                assert [v["field"] for v in error["violations"]] == ["body.explain"], error
        schema = http.get("/openapi.json").json()["components"]["schemas"]
        assert "SearchExplanation" in schema and "explain" in schema["MemorySearch"]["properties"]
