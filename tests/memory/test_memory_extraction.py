"""LLM fact extraction (memory_config provider "mem0", ExtractMemories) end to end: the SDK, a real gRPC
server with the state and memory services, and a real OpenAI-compatible HTTP server answering the real
``openai`` client from a script (tests/llm_server.py). Each scripted answer is what a model could say;
the tests check what reaches the model and what ends up stored."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from sessionkit import FailedPrecondition, InvalidArgument, NotFound, RetryPolicy, ServiceUnavailable, Session
from sessionkit.v1 import common_pb2, memory_pb2, memory_pb2_grpc
from sessionkit_server.common.config import ServerSettings
from tests.conftest import _truncate, free_port
from tests.llm_server import LLMServer, llm_server_fixture  # noqa: F401 - the llm_server fixture
from tests.servers import ServerThread

MODEL = "test-model"
MEMORY_ID = re.compile(r"m-[0-9a-f]{32}")


def settings(tmp_path: Path, llm_base_url: str = "", database_url: str = "") -> ServerSettings:
    return ServerSettings(
        port=0,
        data_dir=tmp_path / "data",
        database_url=database_url,
        services=["state", "memory"],
        log_format="text",
        llm_base_url=llm_base_url,
        llm_model=MODEL,
        llm_api_key="sk-test" if llm_base_url else "",
    )


@pytest.fixture(params=["sqlite"])
def server(request: pytest.FixtureRequest, tmp_path: Path, llm_server: LLMServer) -> Iterator[ServerThread]:
    """A server whose extraction LLM is ``llm_server``; parametrize with "postgres" for PostgreSQL."""
    url = request.getfixturevalue("pg_database") if request.param == "postgres" else ""
    thread = ServerThread(settings(tmp_path, llm_server.base_url, url)).start()
    yield thread
    thread.stop()
    if url:
        asyncio.run(_truncate(url))


def mem0(server: ServerThread, sid: str = "s1", user: str = "alice", **kwargs: Any) -> Session:
    return Session(sid, user, address=server.address, memory_config={"provider": "mem0"}, **kwargs)


def rag(server: ServerThread, sid: str = "s1", user: str = "alice") -> Session:
    return Session(sid, user, address=server.address)


def ops(*operations: dict[str, str]) -> str:
    return json.dumps({"operations": list(operations)})


def changes(session: Session, memory_id: str) -> list[tuple[str, str]]:
    return [(c["operation"], c["actor"]) for c in session.memory_history(memory_id)]


@pytest.mark.parametrize("server", ["sqlite", "postgres"], indirect=True)
def test_a_new_fact_is_added(server: ServerThread, llm_server: LLMServer) -> None:
    llm_server.reply(ops({"type": "ADD", "fact": "The user is vegetarian"}))
    s = mem0(server)
    result = s.add_memory("By the way, I'm vegetarian", topic="food")
    assert result is not None
    assert result["model"] == MODEL and result["extraction_failed"] is False
    (op,) = result["operations"]
    assert op["type"] == "ADD" and op["fact"] == "The user is vegetarian"
    assert op["memory"]["text"] == "The user is vegetarian"
    assert op["memory"]["metadata"] == {"topic": "food"} and op["memory"]["memory_type"] == "long"
    assert [m["text"] for m in s.list_memories()] == ["The user is vegetarian"]
    assert s.search_memory("vegetarian food")[0]["id"] == op["memory"]["id"]  # indexed too
    assert changes(s, op["memory"]["id"]) == [("ADD", f"llm:{MODEL}")]
    (request,) = llm_server.chat_requests
    assert request.body["model"] == MODEL
    assert request.body["response_format"] == {"type": "json_object"}
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.messages[0]["role"] == "system" and "ADD" in request.messages[0]["content"]
    assert "By the way, I'm vegetarian" in request.prompt


@pytest.mark.parametrize("server", ["sqlite", "postgres"], indirect=True)
def test_an_existing_memory_the_llm_was_shown_is_updated(server: ServerThread, llm_server: LLMServer) -> None:
    porto = rag(server).store_long_memory("The user lives in Porto")
    assert porto is not None
    llm_server.reply(ops({"type": "UPDATE", "memory_id": porto["id"], "fact": "The user lives in Lisbon"}))
    s = mem0(server, "s2")
    result = s.add_memory("I moved to Lisbon last month")
    assert result is not None
    (op,) = result["operations"]
    assert op["type"] == "UPDATE" and op["old_text"] == "The user lives in Porto"
    assert op["memory"]["id"] == porto["id"] and op["memory"]["text"] == "The user lives in Lisbon"
    stored = s.get_memory(porto["id"])
    assert stored["text"] == "The user lives in Lisbon" and stored["revision"] == 2
    assert changes(s, porto["id"]) == [("ADD", "user"), ("UPDATE", f"llm:{MODEL}")]
    update = s.memory_history(porto["id"])[1]
    assert (
        update["old_text"] == "The user lives in Porto" and update["new_text"] == "The user lives in Lisbon"
    )
    assert [h["id"] for h in s.search_memory("Lisbon")] == [porto["id"]]
    # The model was shown the memory it changed, with its id.
    (request,) = llm_server.chat_requests
    assert porto["id"] in request.prompt and "The user lives in Porto" in request.prompt


def test_a_contradicted_memory_is_deleted(server: ServerThread, llm_server: LLMServer) -> None:
    rex = rag(server).store_long_memory("The user has a dog named Rex")
    assert rex is not None
    llm_server.reply(ops({"type": "DELETE", "memory_id": rex["id"], "fact": "The user has no pets"}))
    s = mem0(server)
    result = s.add_memory("Rex? I never had a dog, that was my neighbour's")
    assert result is not None
    (op,) = result["operations"]
    assert op["type"] == "DELETE" and op["memory"]["id"] == rex["id"]
    assert op["memory"]["text"] == "The user has a dog named Rex"
    with pytest.raises(NotFound):
        s.get_memory(rex["id"])
    assert s.search_memory("dog named Rex") == []
    assert changes(s, rex["id"]) == [("ADD", "user"), ("DELETE", f"llm:{MODEL}")]


def test_known_facts_change_nothing(server: ServerThread, llm_server: LLMServer) -> None:
    tea = rag(server).store_long_memory("The user prefers tea over coffee")
    assert tea is not None
    llm_server.reply(
        ops(
            {"type": "NONE", "memory_id": tea["id"], "fact": "The user likes tea"},
            # An ADD of a text already stored is deduplicated: reported as known, nothing written.
            {"type": "ADD", "fact": "The user prefers tea over coffee"},
        )
    )
    s = mem0(server)
    result = s.add_memory("Tea for me please, as always")
    assert result is not None
    assert [(o["type"], o["memory"]["id"]) for o in result["operations"]] == [
        ("NONE", tea["id"]),
        ("NONE", tea["id"]),
    ]
    assert s.get_memory(tea["id"])["revision"] == 1
    assert changes(s, tea["id"]) == [("ADD", "user")]
    assert len(s.list_memories()) == 1


def test_malformed_output_is_retried_with_the_problem_and_then_applied(
    server: ServerThread, llm_server: LLMServer
) -> None:
    llm_server.script(
        "Sure! Here are the facts: the user's sister is Ana.",
        json.dumps({"facts": ["The user's sister is called Ana"]}),
        ops({"type": "ADD", "fact": "The user's sister is called Ana"}),
    )
    s = mem0(server)
    result = s.add_memory("My sister Ana visits on Sunday")
    assert result is not None and result["extraction_failed"] is False
    assert [(o["type"], o["fact"]) for o in result["operations"]] == [
        ("ADD", "The user's sister is called Ana")
    ]
    assert [m["text"] for m in s.list_memories()] == ["The user's sister is called Ana"]
    first, second, third = llm_server.chat_requests
    # Each retry carries the unusable answer and what was wrong with it.
    assert second.messages[: len(first.messages)] == first.messages
    assert second.messages[-2] == {
        "role": "assistant",
        "content": "Sure! Here are the facts: the user's sister is Ana.",
    }
    assert "not valid JSON" in second.messages[-1]["content"]
    assert '"operations" list' in third.messages[-1]["content"]


def test_malformed_output_three_times_stores_the_users_text(
    server: ServerThread, llm_server: LLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    llm_server.script("nope", "{}", ops({"type": "REMEMBER", "fact": "passport"}))
    s = mem0(server)
    text = "Remember: my passport number ends in 4471"
    result = s.add_memory(text, source="chat")  # no exception: logged, and the text kept
    assert result is not None and result["extraction_failed"] is True
    (op,) = result["operations"]
    assert op["type"] == "ADD" and op["memory"]["text"] == text
    assert op["memory"]["metadata"] == {"source": "chat", "extraction": "failed"}
    assert [m["text"] for m in s.list_memories()] == [text]
    assert s.list_memories(metadata_filter={"extraction": "failed"})[0]["id"] == op["memory"]["id"]
    assert changes(s, op["memory"]["id"]) == [("ADD", "extractor")]
    assert len(llm_server.chat_requests) == 3 and llm_server.pending == 0
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("sessionkit.memory")]
    assert any("attempt 3 of 3" in m and "'REMEMBER'" in m for m in logged)
    assert any(m.startswith("extraction skipped") for m in logged)


def test_a_server_error_is_retried(server: ServerThread, llm_server: LLMServer) -> None:
    llm_server.fail(500, "overloaded")
    llm_server.reply(ops({"type": "ADD", "fact": "The user's birthday is on May 4"}))
    s = mem0(server)
    result = s.add_memory("My birthday is May 4th")
    assert result is not None
    assert [o["type"] for o in result["operations"]] == ["ADD"]
    assert len(llm_server.chat_requests) == 2
    assert [m["text"] for m in s.list_memories()] == ["The user's birthday is on May 4"]


def test_a_rate_limit_waits_for_retry_after(server: ServerThread, llm_server: LLMServer) -> None:
    llm_server.fail(429, "rate limited", retry_after=1.2)
    llm_server.reply(ops({"type": "ADD", "fact": "The user speaks Portuguese"}))
    s = mem0(server)
    result = s.add_memory("Falo português")
    assert result is not None and [o["type"] for o in result["operations"]] == ["ADD"]
    first, second = llm_server.chat_requests
    # The backoff alone would be at most 0.5 s here: the wait is the server's Retry-After.
    assert second.time - first.time >= 1.15


def test_an_llm_that_keeps_failing_is_service_unavailable_naming_it(
    server: ServerThread, llm_server: LLMServer
) -> None:
    for _ in range(4):
        llm_server.fail(503, "maintenance")
    s = mem0(server, retry=RetryPolicy(max_attempts=1))
    with pytest.raises(ServiceUnavailable) as info:
        s.add_memory("I like jazz")
    assert info.value.reason == "EXTRACTION_LLM_UNAVAILABLE"
    assert llm_server.base_url in str(info.value) and MODEL in str(info.value)
    assert info.value.metadata["model"] == MODEL
    assert len(llm_server.chat_requests) == 4
    assert s.list_memories() == []


def test_an_unreachable_llm_is_service_unavailable(tmp_path: Path) -> None:
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    thread = ServerThread(settings(tmp_path, base_url)).start()
    try:
        s = mem0(thread, retry=RetryPolicy(max_attempts=1))
        with pytest.raises(ServiceUnavailable) as info:
            s.add_memory("I like jazz")
        assert info.value.reason == "EXTRACTION_LLM_UNAVAILABLE"
        assert base_url in str(info.value) and MODEL in str(info.value)
        assert s.list_memories() == []
    finally:
        thread.stop()


def test_without_an_llm_extraction_says_what_to_configure(tmp_path: Path) -> None:
    thread = ServerThread(settings(tmp_path)).start()
    try:
        s = mem0(thread)  # constructing a "mem0" session is fine
        with pytest.raises(FailedPrecondition) as info:
            s.add_memory("I like jazz")
        assert info.value.reason == "EXTRACTION_UNAVAILABLE"
        assert "SESSIONKIT_LLM_BASE_URL" in str(info.value) and "OPENAI_API_KEY" in str(info.value)
        with pytest.raises(FailedPrecondition):
            rag(thread).extract_memories([{"role": "user", "content": "I like jazz"}])
        assert rag(thread).store_long_memory("plain memories still work") is not None
    finally:
        thread.stop()


def test_the_prompt_shows_the_users_related_memories_only(
    server: ServerThread, llm_server: LLMServer
) -> None:
    alice = rag(server)
    peanuts = alice.store_long_memory("The user is allergic to peanuts")
    assert peanuts is not None
    topics = ["chess", "sailing", "opera", "knitting", "astronomy", "pottery", "surfing", "origami"]
    topics += ["archery", "beekeeping", "calligraphy", "fencing"]
    for topic in topics:
        alice.store_long_memory(f"The user took up {topic} this year")
    rag(server, user="bob").store_long_memory("Bob is allergic to peanuts and shellfish")
    llm_server.reply(ops())
    result = mem0(server).extract_memories(
        [
            {"role": "user", "content": "Can you suggest a snack? Nothing with peanuts, remember."},
            {"role": "assistant", "content": "Sure: apple slices with yoghurt."},
        ]
    )
    assert result == {"operations": [], "model": MODEL, "extraction_failed": False}
    (request,) = llm_server.chat_requests
    assert peanuts["id"] in request.prompt and "The user is allergic to peanuts" in request.prompt
    assert len(set(MEMORY_ID.findall(request.prompt))) == 10  # the best matches, not all 13
    assert "Bob" not in request.prompt and "shellfish" not in request.prompt
    assert "apple slices with yoghurt" in request.prompt  # the whole turn is shown
    assert len(alice.list_memories()) == 13  # an empty answer changes nothing


def test_another_users_memory_id_is_refused_and_never_changed(
    server: ServerThread, llm_server: LLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    bob = rag(server, user="bob").store_long_memory("Bob lives in Berlin")
    paris = rag(server).store_long_memory("The user lives in Paris")
    assert bob is not None and paris is not None
    llm_server.script(
        ops({"type": "UPDATE", "memory_id": bob["id"], "fact": "The user lives in Berlin"}),
        ops({"type": "UPDATE", "memory_id": paris["id"], "fact": "The user lives in Rome"}),
    )
    result = mem0(server).add_memory("I live in Rome now")
    assert result is not None
    assert [(o["type"], o["memory"]["id"]) for o in result["operations"]] == [("UPDATE", paris["id"])]
    first, second = llm_server.chat_requests
    assert bob["id"] not in first.prompt and "Berlin" not in first.prompt
    assert f"{bob['id']!r} is not one of the existing memories" in second.messages[-1]["content"]
    assert any(bob["id"] in r.getMessage() and "attempt 1" in r.getMessage() for r in caplog.records)
    bobs = rag(server, user="bob")
    assert bobs.get_memory(bob["id"])["text"] == "Bob lives in Berlin"
    assert changes(bobs, bob["id"]) == [("ADD", "user")]


def test_an_llm_insisting_on_another_users_memory_falls_back_to_the_users_text(
    server: ServerThread, llm_server: LLMServer
) -> None:
    bob = rag(server, user="bob").store_long_memory("Bob lives in Berlin")
    assert bob is not None
    for _ in range(3):
        llm_server.reply(ops({"type": "DELETE", "memory_id": bob["id"]}))
    result = mem0(server).add_memory("I live in Rome now")
    assert result is not None and result["extraction_failed"] is True
    assert [m["text"] for m in mem0(server).list_memories()] == ["I live in Rome now"]
    bobs = rag(server, user="bob")
    assert bobs.get_memory(bob["id"])["revision"] == 1
    assert changes(bobs, bob["id"]) == [("ADD", "user")]


def test_a_dry_run_decides_without_applying(server: ServerThread, llm_server: LLMServer) -> None:
    job = rag(server).store_long_memory("The user works as a nurse")
    assert job is not None
    llm_server.reply(
        ops(
            {"type": "UPDATE", "memory_id": job["id"], "fact": "The user works as a paramedic"},
            {"type": "ADD", "fact": "The user works night shifts"},
        )
    )
    result = mem0(server).extract_memories(
        [{"role": "user", "content": "I'm a paramedic now, on night shifts"}], dry_run=True
    )
    assert result is not None
    update, add = result["operations"]
    assert update["type"] == "UPDATE" and update["memory"]["text"] == "The user works as a paramedic"
    assert update["old_text"] == "The user works as a nurse"
    assert add["type"] == "ADD" and add["memory"]["id"] == "" and add["memory"]["text"] == add["fact"]
    s = rag(server)
    assert [(m["text"], m["revision"]) for m in s.list_memories()] == [("The user works as a nurse", 1)]


def test_a_turn_can_go_to_short_term_memory(server: ServerThread, llm_server: LLMServer) -> None:
    llm_server.reply(ops({"type": "ADD", "fact": "The user is comparing flights to Oslo"}))
    s = rag(server, "trip")
    result = s.memory.extract(
        [
            {"role": "user", "content": "Show me flights to Oslo for Friday", "name": "ana"},
            {"role": "assistant", "content": "Here are three options."},
        ],
        "short",
    )
    assert result is not None
    (op,) = result["operations"]
    assert op["memory"]["memory_type"] == "short" and op["memory"]["session_id"] == "trip"
    assert rag(server, "other").search_memory("Oslo", memory_type="short") == []
    (request,) = llm_server.chat_requests
    assert '"name": "ana"' in request.prompt


def test_bad_turns_are_refused_without_asking_the_llm(server: ServerThread, llm_server: LLMServer) -> None:
    s = mem0(server)
    for bad in (
        [],
        [{"role": "", "content": "x"}],
        [{"role": "user", "content": "x", "mood": "happy"}],
        [{"role": "user", "content": 3}],
        "hello",
    ):
        with pytest.raises(InvalidArgument):
            s.extract_memories(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        s.add_memory("")
    with grpc.insecure_channel(server.address) as channel:
        stub = memory_pb2_grpc.MemoryServiceStub(channel)  # type: ignore[no-untyped-call]
        ref = common_pb2.SessionRef(app_name="default", user_id="alice", session_id="s1")
        for messages in ([], [memory_pb2.ConversationMessage(role=" ", content="hi")]):
            with pytest.raises(grpc.RpcError) as info:
                stub.ExtractMemories(memory_pb2.ExtractMemoriesRequest(session=ref, messages=messages))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert llm_server.chat_requests == []
    assert s.list_memories() == []


def test_memory_off_skips_extraction(server: ServerThread, llm_server: LLMServer) -> None:
    off = Session("s1", "alice", address=server.address, memory_config={"provider": "none"})
    assert off.extract_memories([{"role": "user", "content": "I like jazz"}]) is None
    assert llm_server.chat_requests == []


@pytest.mark.parametrize("server", ["sqlite", "postgres"], indirect=True)
def test_a_repeated_extraction_with_the_same_key_applies_once(
    server: ServerThread, llm_server: LLMServer
) -> None:
    llm_server.reply(ops({"type": "ADD", "fact": "The user plays the cello"}))
    ref = common_pb2.SessionRef(app_name="default", user_id="alice", session_id="s1")
    request = memory_pb2.ExtractMemoriesRequest(
        session=ref,
        messages=[memory_pb2.ConversationMessage(role="user", content="I play the cello")],
        idempotency_key="turn-1",
    )
    with grpc.insecure_channel(server.address) as channel:
        stub = memory_pb2_grpc.MemoryServiceStub(channel)  # type: ignore[no-untyped-call]
        first = stub.ExtractMemories(request)
        again = stub.ExtractMemories(request)
        # Same key, other content: still the first response, the LLM not asked again.
        other = memory_pb2.ExtractMemoriesRequest()
        other.CopyFrom(request)
        other.messages[0].content = "I play the violin"
        third = stub.ExtractMemories(other)
    assert [o.fact for o in first.operations] == ["The user plays the cello"]
    assert again == first and third == first
    assert len(llm_server.chat_requests) == 1
    assert [m["text"] for m in rag(server).list_memories()] == ["The user plays the cello"]


def test_add_memories_keeps_each_items_type_quality_and_metadata(
    server: ServerThread, llm_server: LLMServer
) -> None:
    llm_server.reply(ops({"type": "ADD", "fact": "The user is vegetarian"}))
    llm_server.reply(ops({"type": "ADD", "fact": "The user is in Rome this week"}))
    s = mem0(server)
    results = s.add_memories(
        [
            {"text": "I'm vegetarian", "quality_score": 0.9, "metadata": {"topic": "food"}},
            {"text": "I'm in Rome this week", "memory_type": "short", "metadata": {"topic": "travel"}},
        ]
    )
    assert results is not None
    first, second = (r["operations"][0]["memory"] for r in results)
    assert (first["memory_type"], first["quality_score"], first["metadata"]) == (
        "long",
        0.9,
        {"topic": "food"},
    )
    assert (second["memory_type"], second["quality_score"], second["metadata"]) == (
        "short",
        0.5,
        {"topic": "travel"},
    )
    assert {m["text"]: m["memory_type"] for m in s.list_memories()} == {
        "The user is vegetarian": "long",
        "The user is in Rome this week": "short",
    }
