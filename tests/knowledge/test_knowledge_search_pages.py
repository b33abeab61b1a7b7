"""A search reads the rows of its best candidates a page at a time (services/knowledge/service.py):
a filter that passes only lower-ranked candidates still finds them, in the order of the ranking."""

from __future__ import annotations

import uuid

from sessionkit import AsyncSession
from tests.servers import ServerThread


async def test_a_filter_finds_the_candidates_beyond_the_first_page(knowledge_server: ServerThread) -> None:
    s = AsyncSession(f"s-{uuid.uuid4().hex[:8]}", user_id="pages", address=knowledge_server.address)
    s.knowledge_config = {"chunker": {"type": "token", "chunk_size": 16, "chunk_overlap": 0}}
    # About 26 chunks about zebras in "many", ranked above the one of "few" for this query: "few" is
    # among the candidates (40 of each ranking), beyond the first page of rows read (12 for a limit of 1).
    await s.add_knowledge(" ".join(f"zebra stripes savanna herd {n}." for n in range(60)), name="many")
    await s.add_knowledge("A zebra was seen once near the river, among other animals at dusk.", name="few")
    everything = await s.search_knowledge("zebra stripes savanna", limit=20)
    assert len(everything) == 20 and {h["source"]["name"] for h in everything} == {"many"}
    ranked = [h["source"]["name"] for h in await s.search_knowledge("zebra stripes savanna", limit=30)]
    assert ranked.index("few") >= 12  # so the filtered search below reads beyond its first page
    (hit,) = await s.search_knowledge("zebra stripes savanna", limit=1, source_names=["few"])
    assert hit["source"]["name"] == "few" and "river" in hit["text"]
    assert [h["score"] for h in everything] == sorted((h["score"] for h in everything), reverse=True)
    await s.close()
