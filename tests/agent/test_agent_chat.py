"""Session-bound agents end to end: the SDK, a real gRPC server with every service, and a real OpenAI-
compatible HTTP server (tests/llm_server.py) answering the real ``openai`` client from a script. The tests
check what the user gets, what reaches the model, and what ends up stored. This module: chat and
streaming, memory and knowledge in the prompt, the token budget, mem0 extraction and cancelling a stream."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sessionkit import AsyncSession
from tests.agent.support import MODEL, eventually, session, settings, system_prompt
from tests.llm_server import LLMServer, Reply
from tests.servers import ServerThread


@pytest.mark.parametrize("server", ["sqlite", "postgres"], indirect=True)
def test_chat_answers_remembers_the_conversation_and_logs_it(
    server: ServerThread, llm_server: LLMServer
) -> None:
    s = session(server)
    agent = s.Agent(
        name="Support Bot",
        role="Customer Support Specialist",
        instructions="Remember customer preferences and previous issues.",
    )
    llm_server.script("Sorry to hear that! Let me look at order #12345.", "Your order is #12345.")
    assert (
        agent.chat("I'm having trouble with my order #12345")
        == "Sorry to hear that! Let me look at order #12345."
    )
    assert agent.chat("Which order was it?") == "Your order is #12345."

    first, second = llm_server.chat_requests
    assert first.body["model"] == MODEL
    assert "Support Bot" in system_prompt(first) and "Customer Support Specialist" in system_prompt(first)
    assert "Remember customer preferences" in system_prompt(first)
    # The second turn sees the first one as history, in order, then the new message.
    assert [(m["role"], m["content"]) for m in second.messages[1:]] == [
        ("user", "I'm having trouble with my order #12345"),
        ("assistant", "Sorry to hear that! Let me look at order #12345."),
        ("user", "Which order was it?"),
    ]
    meta = agent.last_metadata
    assert meta["model"] == MODEL and meta["agent_name"] == "Support Bot" and meta["finish_reason"] == "stop"
    assert (
        meta["usage"]["total_tokens"]
        == meta["usage"]["prompt_tokens"] + meta["usage"]["completion_tokens"]
        > 0
    )
    for step in ("history_ms", "memory_ms", "knowledge_ms", "llm_ms", "persistence_ms", "total_ms"):
        assert meta["latency"][step] >= 0
    events = s.get_events()
    assert [(e.role, e.content) for e in events] == [
        ("user", "I'm having trouble with my order #12345"),
        ("assistant", "Sorry to hear that! Let me look at order #12345."),
        ("user", "Which order was it?"),
        ("assistant", "Your order is #12345."),
    ]
    assert [e.id for e in events[2:]] == meta["event_ids"]
    assert events[3].metadata["turn_id"] == meta["turn_id"] and events[3].author == "Support Bot"
    # Each exchange is kept as a short-term memory of the session (written after the reply).
    assert meta["stored_memory_ids"] == []
    texts = eventually(
        lambda: [m["text"] for m in s.list_memories("short")] if len(s.list_memories("short")) == 2 else []
    )
    assert any("Which order was it?" in t and "Your order is #12345." in t for t in texts)


def test_streaming_yields_pieces_as_they_are_generated(server: ServerThread, llm_server: LLMServer) -> None:
    agent = session(server).Agent(name="Streamer")
    llm_server.script(Reply(content="one two three four", piece_delay=0.3))
    arrivals: list[tuple[str, float]] = []
    start = time.monotonic()
    for piece in agent.chat("count", stream=True):
        arrivals.append((piece, time.monotonic() - start))
    assert "".join(p for p, _ in arrivals) == "one two three four"
    assert len(arrivals) == 4
    # The first piece arrived while the model was still generating the rest (no buffering).
    assert arrivals[-1][1] - arrivals[0][1] >= 0.6
    assert agent.last_metadata["usage"]["completion_tokens"] == 4
    assert llm_server.chat_requests[0].body["stream"] is True
    llm_server.reply("again")
    assert list(agent.stream("once more")) == ["again"]


def test_memory_and_knowledge_reach_the_prompt(server: ServerThread, llm_server: LLMServer) -> None:
    s = session(server)
    s.store_long_memory("The user's favourite colour is blue", quality_score=0.9)
    s.add_knowledge("Refund policy: refunds are possible within 30 days of delivery.")
    agent = s.Agent(name="Helper", instructions="Use the knowledge base")
    llm_server.reply("Blue, and 30 days.")
    assert agent.chat("What is my favourite colour and the refund window?") == "Blue, and 30 days."
    prompt = system_prompt(llm_server.chat_requests[0])
    assert "favourite colour is blue" in prompt
    assert "refunds are possible within 30 days" in prompt
    meta = agent.last_metadata
    assert len(meta["memory_ids"]) == 1 and len(meta["knowledge_chunk_ids"]) == 1

    # memory=False: nothing read, nothing written.
    quiet = s.Agent(name="Forgetful", memory=False, knowledge=False)
    llm_server.reply("ok")
    quiet.chat("What is my favourite colour?")
    prompt = system_prompt(llm_server.chat_requests[1])
    assert "blue" not in prompt and "refund" not in prompt.lower()
    assert quiet.last_metadata["stored_memory_ids"] == []


def test_the_prompt_stays_within_the_token_budget(tmp_path: Path, llm_server: LLMServer) -> None:
    config = settings(tmp_path, llm_server.base_url).model_copy(update={"agent_context_tokens": 400})
    thread = ServerThread(config).start()
    try:
        agent = session(thread).Agent(name="Budget", memory=False)
        long = "word " * 150
        for n in range(4):
            llm_server.reply(f"reply {n}")
            agent.chat(f"message {n}: {long}")
        messages = llm_server.chat_requests[-1].messages
        # The newest turns are kept, the oldest dropped, and the new message is always there.
        assert messages[-1]["content"].startswith("message 3")
        assert len(messages) < 2 + 2 * 3
        assert messages[1]["content"].startswith("message 2")
    finally:
        thread.stop()


async def test_async_session_agents(server: ServerThread, llm_server: LLMServer) -> None:
    s = AsyncSession("async-1", "alice", address=server.address)
    agent = s.Agent(name="Async Bot")
    llm_server.script("hi async", "streamed reply")
    assert await agent.chat("hello") == "hi async"
    pieces = [p async for p in await agent.chat("stream please", stream=True)]
    assert "".join(pieces) == "streamed reply"
    assert [a.name for a in await s.agents()] == ["Async Bot"]


def test_knowledge_sources_named_by_the_agent_limit_its_search(
    server: ServerThread, llm_server: LLMServer, tmp_path: Path
) -> None:
    manual = tmp_path / "technical_manual.md"
    manual.write_text("# Authentication\n\nSend the API key in the X-Api-Key header of every request.\n")
    s = session(server, sid="doc_assistant_001")
    s.add_knowledge("Quick reference: the API key is printed on your invoice")
    assistant = s.Agent(name="DocBot", role="Documentation Assistant", knowledge=[str(manual)])
    assert assistant.definition is not None
    assert assistant.definition["knowledge_sources"] == ["technical_manual.md"]
    llm_server.reply("Use the X-Api-Key header.")
    assert assistant.chat("How do I authenticate with the API key?") == "Use the X-Api-Key header."
    prompt = system_prompt(llm_server.chat_requests[0])
    assert "X-Api-Key header" in prompt and "invoice" not in prompt
    assert {s_["name"] for s_ in s.list_knowledge()} >= {"technical_manual.md"}


def test_mem0_sessions_extract_facts_from_each_exchange(server: ServerThread, llm_server: LLMServer) -> None:
    s = session(server, memory_config={"provider": "mem0"})
    agent = s.Agent(name="Personal Assistant", instructions="Remember user preferences")
    llm_server.script(
        "Blue is a lovely colour!",
        json.dumps({"operations": [{"type": "ADD", "fact": "The user's favourite colour is blue"}]}),
    )
    assert agent.chat("My favorite color is blue") == "Blue is a lovely colour!"
    (memory,) = eventually(lambda: s.list_memories("long"))
    assert memory["text"] == "The user's favourite colour is blue" and memory["memory_type"] == "long"
    extraction = llm_server.chat_requests[1]
    assert (
        "My favorite color is blue" in extraction.prompt and "Blue is a lovely colour!" in extraction.prompt
    )


def test_closing_a_stream_early_cancels_the_turn(server: ServerThread, llm_server: LLMServer) -> None:
    s = session(server)
    agent = s.Agent(name="Chatty")
    llm_server.script(Reply(content="one two three four five six", piece_delay=0.3), "short")
    stream = agent.stream("tell me a long story")
    assert next(stream) == "one"
    stream.close()  # the user stopped reading
    # The conversation is free again at once, and the cancelled turn appended no reply.
    assert agent.chat("and now?", busy="fail") == "short"
    assert [(e.role, e.content) for e in s.get_events()] == [
        ("user", "tell me a long story"),
        ("user", "and now?"),
        ("assistant", "short"),
    ]


def test_memory_written_before_the_reply_is_in_the_metadata(tmp_path: Path, llm_server: LLMServer) -> None:
    config = settings(tmp_path, llm_server.base_url).model_copy(update={"agent_memory_after_reply": False})
    thread = ServerThread(config).start()
    try:
        s = session(thread)
        agent = s.Agent(name="Careful")
        llm_server.reply("Noted.")
        agent.chat("I moved to Porto")
        (stored,) = agent.last_metadata["stored_memory_ids"]
        assert s.get_memory(stored)["text"] == "User: I moved to Porto\nCareful: Noted."
    finally:
        thread.stop()
