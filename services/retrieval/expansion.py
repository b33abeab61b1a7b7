"""Optional query understanding for memory and knowledge search: an OpenAI-compatible chat model
rewrites the search query into other queries (keyword rewordings and one short hypothetical answer,
"HyDE"), and the search runs the query and each of them, fusing every ranking (reciprocal rank fusion,
the rewritten queries' rankings weighted :data:`EXPANSION_WEIGHT` against the query's 1).

Off by default (``SESSIONKIT_SEARCH_QUERY_EXPANSION``; it needs the LLM of ``SESSIONKIT_LLM_*``): one
LLM call per search, which on a real model costs more than the whole search does without it (docs/
MEMORY.md, "Query expansion"). Never required: a failure of the model (unreachable, refused, timed out,
an answer that is not the JSON asked for) is logged as a warning and the search runs on the query
alone, as without expansion; it is never an error of the search.

Quality with a real model is not measured here (no model runs on the project's machines); the weight
is a prior, not fitted.

The transport is sessionkit_server.common.llm's client (the same ``openai.AsyncOpenAI`` as fact
extraction), with one attempt: a search waits for no backoff."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sessionkit import reasons
from sessionkit.errors import SessionKitError
from sessionkit_server.common.llm import LLMClient, Reasons

log = logging.getLogger("sessionkit.retrieval.expansion")

REASONS = Reasons(
    unavailable=reasons.QUERY_LLM_UNAVAILABLE,
    rejected=reasons.QUERY_LLM_REJECTED,
    label="the query expansion LLM",
)

#: Weight of each rewritten query's dense and lexical rankings in the fusion (the query's own are 1):
#: the query says what the user asked; a rewording adds recall but may drift.
EXPANSION_WEIGHT = 0.5
#: Most rewritten queries used (the model is asked for this many; more are ignored).
MAX_QUERIES = 3
#: Longest rewritten query kept (characters); a longer one is cut.
MAX_QUERY_CHARS = 300

SYSTEM_PROMPT = f"""\
You help a search engine find a user's stored notes and documents. Given a search query, write up to
{MAX_QUERIES} other search queries that find what the query is looking for:
- one or two rewordings with the likely keywords (names, places, objects, synonyms) of the answer;
- one short sentence that could be the answer itself, as the user's notes might state it.
Keep each under 30 words, in the language of the query. Do not answer anything else.
Answer with one JSON object and nothing else: {{"queries": ["...", "..."]}}"""


class QueryExpander:
    """The rewritten queries of a search query, from one chat completion."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 10.0,
        client: LLMClient | None = None,
    ) -> None:
        self.model = model
        self.llm = client or LLMClient(
            REASONS, base_url=base_url, api_key=api_key, timeout=timeout, max_attempts=1
        )

    async def close(self) -> None:
        await self.llm.close()

    async def expand(self, query: str) -> list[str]:
        """Up to :data:`MAX_QUERIES` other queries for ``query`` (distinct, none equal to it); [] when
        the model fails or answers something unusable (logged as a warning: the search goes on with
        the query alone)."""
        try:
            answer = await self.llm.call(self.model, lambda: self._ask(query))
            return _queries(answer, query)
        except (SessionKitError, ValueError) as error:
            log.warning("query expansion failed, searching with the query alone: %s", error)
            return []

    async def _ask(self, query: str) -> str:
        response = await self.llm.client.chat.completions.create(
            model=self.model,
            messages=[
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": query},
            ],
            response_format={"type": "json_object"},
            temperature=0,
        )
        content = response.choices[0].message.content if response.choices else None
        if not content:
            raise ValueError("the model's answer is empty")
        return content


def _queries(answer: str, query: str) -> list[str]:
    """The queries of the model's JSON answer; ValueError when it is not ``{"queries": [str, ...]}``."""
    try:
        value: Any = json.loads(answer)
    except json.JSONDecodeError as error:
        raise ValueError(f"the answer is not JSON: {answer[:200]!r}") from error
    items = value.get("queries") if isinstance(value, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError(f'the answer is not {{"queries": [strings]}}: {answer[:200]!r}')
    seen = {" ".join(query.casefold().split())}
    out: list[str] = []
    for item in items:
        text = " ".join(item.split())[:MAX_QUERY_CHARS]
        key = text.casefold()
        if text and key not in seen:
            seen.add(key)
            out.append(text)
    return out[:MAX_QUERIES]


Ranking = list[tuple[str, float]]


async def rankings_with_expansion(
    expander: QueryExpander | None,
    query: str,
    rankings_of: Callable[[str], Awaitable[tuple[Ranking, Ranking]]],
    lexical_weight: float,
) -> tuple[list[Ranking], list[float]]:
    """The (dense, lexical, dense, lexical, ...) rankings to fuse and their weights: the query's own
    first (weights 1 and ``lexical_weight``), then each rewritten query's (times
    :data:`EXPANSION_WEIGHT`). The model is asked while the query's own rankings are made; without an
    expander, or when it fails, only the query's."""
    expanding = asyncio.ensure_future(expander.expand(query)) if expander is not None else None
    try:
        dense, lexical = await rankings_of(query)
    except BaseException:
        if expanding is not None:
            expanding.cancel()
        raise
    rankings: list[Ranking] = [dense, lexical]
    weights = [1.0, lexical_weight]
    if expanding is not None:
        for more in await asyncio.gather(*(rankings_of(q) for q in await expanding)):
            rankings += more
            weights += [EXPANSION_WEIGHT, EXPANSION_WEIGHT * lexical_weight]
    return rankings, weights


def best_scores(rankings: list[Ranking]) -> tuple[dict[str, float], dict[str, float]]:
    """Each hit's dense score and lexical score (scaled by its list's best: bm25 scores of two queries
    do not compare), its best over the (dense, lexical, ...) ``rankings``."""
    semantic: dict[str, float] = {}
    lexical: dict[str, float] = {}
    for n, ranking in enumerate(rankings):
        dense = n % 2 == 0
        top = 1.0 if dense else max((score for _, score in ranking), default=0.0) or 1.0
        best = semantic if dense else lexical
        for item, score in ranking:
            best[item] = max(best.get(item, score / top), score / top)
    return semantic, lexical
