"""Query expansion (SESSIONKIT_SEARCH_QUERY_EXPANSION, sessionkit_server.retrieval.expansion) end to
end: the SDK, a real gRPC server with state, memory and knowledge, and a real OpenAI-compatible HTTP
server answering the real ``openai`` client from a script (tests/llm_server.py). The rewritten queries
must be searched; a failing or nonsensical model must leave the plain search, with a warning."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessionkit import Session
from sessionkit_server.common.config import ServerSettings
from tests.llm_server import LLMServer, llm_server_fixture  # noqa: F401 - the llm_server fixture
from tests.servers import ServerThread

#: The question matches no stored word; only the model's rewording names the memory it is about.
QUESTION = "anything I should keep in mind?"
SECRET = "Zorblat is the codeword for the storage unit"
OTHERS = [
    "My sister lives in Porto",
    "I play the cello on Thursdays",
    "The dentist appointment was moved to Friday",
    "We adopted a grey kitten called Miso",
    "I prefer aisle seats on long flights",
]


def settings(tmp_path: Path, llm_base_url: str, expansion: bool = True) -> ServerSettings:
    return ServerSettings(
        port=0,
        data_dir=tmp_path / "data",
        services=["state", "memory", "knowledge"],
        log_format="text",
        llm_base_url=llm_base_url,
        llm_model="test-model",
        llm_api_key="sk-test",
        search_query_expansion=expansion,
    )


@pytest.fixture
def server(tmp_path: Path, llm_server: LLMServer) -> Iterator[ServerThread]:
    thread = ServerThread(settings(tmp_path, llm_server.base_url)).start()
    yield thread
    thread.stop()


def expansions(*queries: str) -> str:
    return json.dumps({"queries": list(queries)})


def test_memory_search_searches_the_models_rewordings_and_degrades_without_them(
    server: ServerThread, llm_server: LLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    s = Session("s1", "alice", address=server.address)
    s.add_memories([{"text": t} for t in [SECRET, *OTHERS]], "long")

    llm_server.fail(500, "model overloaded")  # one attempt: a search waits for no backoff
    plain = [h["text"] for h in s.search_memory(QUESTION, memory_type="long", limit=6)]
    assert sorted(plain) == sorted([SECRET, *OTHERS])  # the plain search, not an error
    assert plain[0] != SECRET  # what the rewording changes below
    assert any("query expansion failed" in r.getMessage() for r in caplog.records)

    llm_server.reply("this is not JSON")  # an unusable answer: the plain search again
    assert [h["text"] for h in s.search_memory(QUESTION, memory_type="long", limit=6)] == plain

    llm_server.reply(expansions("Zorblat codeword", "The codeword is Zorblat."))
    (top,) = s.search_memory(QUESTION, memory_type="long", limit=1)
    assert top["text"] == SECRET

    asked = llm_server.chat_requests
    assert len(asked) == 3  # one LLM call per search, no retries
    assert all(QUESTION in r.prompt for r in asked)
    assert asked[-1].body["response_format"] == {"type": "json_object"}


def test_knowledge_search_searches_the_models_rewordings(server: ServerThread, llm_server: LLMServer) -> None:
    s = Session("s1", "alice", address=server.address)
    s.add_knowledge(SECRET, name="secret.txt", scope="user")
    for n, other in enumerate(OTHERS):
        s.add_knowledge(other, name=f"note-{n}.txt", scope="user")
    llm_server.fail(500)

    def ranked() -> list[str]:
        return [h["source"]["name"] for h in s.search_knowledge(QUESTION, limit=6, scopes=["user"])]

    plain = ranked()
    llm_server.reply(expansions("Zorblat codeword", "The codeword is Zorblat."))
    expanded = ranked()
    # Knowledge weighs its lexical ranking 0.5 at RRF k 60 (docs/KNOWLEDGE.md): the rewordings lift
    # the chunk they name, from wherever the question alone put it.
    assert plain.index("secret.txt") > 0 and expanded.index("secret.txt") < plain.index("secret.txt")
    assert len(llm_server.chat_requests) == 2


def test_expansion_is_off_by_default(tmp_path: Path, llm_server: LLMServer) -> None:
    assert ServerSettings().search_query_expansion is False
    thread = ServerThread(settings(tmp_path, llm_server.base_url, expansion=False)).start()
    try:
        s = Session("s1", "alice", address=thread.address)
        s.add_memory("I play the cello on Thursdays", memory_type="long")
        assert s.search_memory(QUESTION, memory_type="long")
        assert llm_server.chat_requests == []
    finally:
        thread.stop()
