"""Session-bound agents end to end: the SDK, a real gRPC server with every service, and a real
OpenAI-compatible HTTP server (tests/llm_server.py) answering the real ``openai`` client from a
script. The tests check what the user gets, what reaches the model, and what ends up stored."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessionkit import (
    AsyncSession,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PraisonAIAgents,
    RateLimited,
    ServiceUnavailable,
    Session,
    StateConflict,
    Task,
)
from sessionkit_server.common.config import ServerSettings
from tests.conftest import _truncate
from tests.llm_server import LLMServer, Reply, ToolCall, llm_server_fixture  # noqa: F401 - fixture
from tests.servers import ServerThread

MODEL = "test-model"


def settings(tmp_path: Path, llm_base_url: str, database_url: str = "") -> ServerSettings:
    return ServerSettings(
        port=0,
        data_dir=tmp_path / "data",
        database_url=database_url,
        log_format="text",
        llm_base_url=llm_base_url,
        llm_model=MODEL,
        llm_api_key="sk-test",
    )


@pytest.fixture(params=["sqlite"])
def server(request: pytest.FixtureRequest, tmp_path: Path, llm_server: LLMServer) -> Iterator[ServerThread]:
    url = request.getfixturevalue("pg_database") if request.param == "postgres" else ""
    thread = ServerThread(settings(tmp_path, llm_server.base_url, url)).start()
    yield thread
    thread.stop()
    if url:
        asyncio.run(_truncate(url))


def session(server: ServerThread, sid: str = "chat-1", user: str = "alice", **kwargs: Any) -> Session:
    return Session(sid, user, address=server.address, **kwargs)


def eventually(check: Any, timeout: float = 20.0) -> Any:
    """``check()``'s first truthy value (memory is written after the reply, in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def system_prompt(request: Any) -> str:
    return str(request.messages[0]["content"])


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


def weather(city: str, unit: str = "C") -> dict[str, Any]:
    """Current weather for a city.

    Args:
        city: The city's name
        unit: C or F
    """
    return {"city": city, "temperature": 21, "unit": unit}


def test_client_tools_run_in_the_callers_process(server: ServerThread, llm_server: LLMServer) -> None:
    calls: list[tuple[str, str]] = []

    def lookup_order(order_id: str) -> dict[str, str]:
        """Find an order."""
        calls.append((order_id, threading.current_thread().name))
        return {"order_id": order_id, "status": "shipped"}

    s = session(server)
    agent = s.Agent(name="Tooly", tools=[weather, lookup_order, "set_state"])
    tools = {t["function"]["name"]: t["function"] for t in []}
    llm_server.script(
        Reply(
            tool_calls=[
                ToolCall("lookup_order", {"order_id": "A-1"}),
                ToolCall("set_state", {"key": "last_order", "value": "A-1"}),
            ]
        ),
        "Order A-1 has shipped.",
    )
    assert agent.chat("Where is order A-1?") == "Order A-1 has shipped."
    assert [c[0] for c in calls] == ["A-1"]
    first, second = llm_server.chat_requests
    tools = {t["function"]["name"]: t["function"] for t in first.body["tools"]}
    assert set(tools) == {"weather", "lookup_order", "set_state"}
    assert tools["weather"]["parameters"]["required"] == ["city"]
    assert tools["weather"]["parameters"]["properties"]["city"] == {
        "type": "string",
        "description": "The city's name",
    }
    assert tools["weather"]["description"] == "Current weather for a city."
    results = {m["tool_call_id"]: json.loads(m["content"]) for m in second.messages if m["role"] == "tool"}
    assert {"order_id": "A-1", "status": "shipped"} in results.values() and {"ok": True} in results.values()
    assert s.get_state("last_order") == "A-1"
    records = agent.last_metadata["tool_calls"]
    assert [(r["tool_name"], r["execution"], r["error"]) for r in records] == [
        ("lookup_order", "CLIENT", ""),
        ("set_state", "SERVER", ""),
    ]
    assert agent.last_metadata["tool_rounds"] == 1
    assert [e.role for e in s.get_events()] == ["user", "tool", "tool", "assistant"]


def test_failing_slow_and_non_json_tools_give_the_model_an_error(
    server: ServerThread, llm_server: LLMServer
) -> None:
    def broken(x: int) -> int:
        """Always fails."""
        raise RuntimeError("disk on fire")

    def slow() -> str:
        """Takes too long."""
        time.sleep(3)
        return "late"

    def weird() -> Any:
        """Returns no JSON."""
        return object()

    agent = session(server).Agent(name="Unlucky", tools=[broken, slow, weird])
    llm_server.script(
        Reply(
            tool_calls=[ToolCall("broken", {"x": 1}), ToolCall("slow"), ToolCall("weird"), ToolCall("nope")]
        ),
        "I could not do it.",
    )
    assert agent.chat("try everything", tool_timeout=1) == "I could not do it."
    results = [json.loads(m["content"]) for m in llm_server.chat_requests[1].messages if m["role"] == "tool"]
    errors = [r["error"] for r in results]
    assert "RuntimeError: disk on fire" in errors[0]
    assert "timed out" in errors[1]
    assert "not JSON" in errors[2]
    assert "unknown tool 'nope'" in errors[3]


def test_tool_rounds_are_bounded(server: ServerThread, llm_server: LLMServer) -> None:
    agent = session(server).Agent(name="Loopy", tools=["get_state"], max_tool_rounds=2)
    llm_server.script(
        Reply(tool_calls=[ToolCall("get_state", {"key": "x"})]),
        Reply(tool_calls=[ToolCall("get_state", {"key": "x"})]),
        "gave up",
    )
    assert agent.chat("loop") == "gave up"
    requests = llm_server.chat_requests
    assert len(requests) == 3
    assert "tools" in requests[1].body and "tools" not in requests[2].body  # the last round must answer
    assert agent.last_metadata["tool_rounds"] == 2


def test_llm_down_names_the_endpoint_and_keeps_the_users_message(tmp_path: Path) -> None:
    config = settings(tmp_path, "http://127.0.0.1:9/v1")
    thread = ServerThread(config).start()
    try:
        s = session(thread)
        agent = s.Agent(name="Offline Bot")
        with pytest.raises(ServiceUnavailable) as caught:
            agent.chat("Is anyone there?")
        assert "127.0.0.1:9" in str(caught.value) and MODEL in str(caught.value)
        assert caught.value.reason == "LLM_UNAVAILABLE"
        assert [(e.role, e.content) for e in s.get_events()] == [("user", "Is anyone there?")]
    finally:
        thread.stop()


def test_rate_limits_and_server_errors_are_retried(server: ServerThread, llm_server: LLMServer) -> None:
    agent = session(server).Agent(name="Patient")
    llm_server.fail(429, retry_after=1).fail(500).reply("finally")
    assert agent.chat("hello") == "finally"
    first, second, _third = llm_server.chat_requests
    assert second.time - first.time >= 0.9  # Retry-After honoured
    # A model that keeps refusing: the clear error, no endless retries.
    for _ in range(4):
        llm_server.fail(429, retry_after=0)
    with pytest.raises(RateLimited) as caught:
        agent.chat("again", busy="fail")
    assert caught.value.reason == "LLM_RATE_LIMITED"
    llm_server.fail(401, "invalid api key")
    with pytest.raises(FailedPrecondition, match="invalid api key"):
        agent.chat("and again")


def test_agents_and_history_survive_a_new_session_and_a_restart(
    tmp_path: Path, llm_server: LLMServer
) -> None:
    config = settings(tmp_path, llm_server.base_url)
    thread = ServerThread(config).start()
    try:
        agent = session(thread).Agent(name="Support Bot", role="Support", instructions="Be kind")
        llm_server.reply("Noted: you like tea.")
        agent.chat("I like tea")
    finally:
        thread.stop()
    thread = ServerThread(config).start()  # same data directory: a restart
    try:
        restored = session(thread)
        (found,) = restored.agents()
        assert (found.name, found.role, found.instructions) == ("Support Bot", "Support", "Be kind")
        llm_server.reply("You like tea.")
        assert found.chat("What do I like?") == "You like tea."
        history = [(m["role"], m["content"]) for m in llm_server.chat_requests[-1].messages[1:]]
        assert history == [
            ("user", "I like tea"),
            ("assistant", "Noted: you like tea."),
            ("user", "What do I like?"),
        ]
        assert found.history()[-1] == {"role": "assistant", "content": "You like tea."}
        # Another user's session of the same id is another conversation.
        assert session(thread, user="bob").agents() == []
    finally:
        thread.stop()


@pytest.mark.parametrize("server", ["sqlite", "postgres"], indirect=True)
def test_concurrent_turns_of_one_session_are_serialized(server: ServerThread, llm_server: LLMServer) -> None:
    llm_server.fallback = lambda request: Reply(
        content=f"answer to {request.messages[-1]['content']}", delay=0.3
    )
    agents = [session(server).Agent(name="Shared") for _ in range(2)]
    results: dict[int, str] = {}

    def chat(n: int) -> None:
        results[n] = agents[n % 2].chat(f"question {n}")

    threads = [threading.Thread(target=chat, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {n: f"answer to question {n}" for n in range(4)}
    events = session(server).get_events()
    # user/assistant pairs, never interleaved, each reply right after its question.
    pairs = [(events[i].content, events[i + 1].content) for i in range(0, len(events), 2)]
    assert sorted(pairs) == [(f"question {n}", f"answer to question {n}") for n in range(4)]
    # Each turn saw the turns before it complete, never half of one.
    for request in llm_server.chat_requests:
        roles = [m["role"] for m in request.messages[1:]]
        assert roles == ["user", "assistant"] * ((len(roles) - 1) // 2) + ["user"]

    # busy="fail": a second caller gets a clear ABORTED at once.
    llm_server.fallback = lambda request: Reply(content="slow", delay=1.0)
    background = threading.Thread(target=lambda: agents[0].chat("long question"))
    background.start()
    time.sleep(0.4)
    with pytest.raises(StateConflict) as caught:
        agents[1].chat("impatient", busy="fail")
    assert caught.value.reason == "CONVERSATION_BUSY"
    background.join()


def test_sequential_workflow_passes_outputs_along(server: ServerThread, llm_server: LLMServer) -> None:
    s = session(server, sid="research_project_001")
    researcher = s.Agent(name="Researcher", role="Research Analyst")
    writer = s.Agent(name="Writer", role="Technical Writer")
    research_task = Task(description="Research AI trends for 2024", agent=researcher)
    writing_task = Task(
        description="Write a report based on research", agent=writer, expected_output="A report"
    )
    llm_server.script("Trend: small models on CPUs.", "Report: small models run on CPUs.")
    workflow = PraisonAIAgents(
        agents=[researcher, writer],
        tasks=[research_task, writing_task],
        memory=s.memory,
        process="sequential",
    )
    result = workflow.start()
    assert result == "Report: small models run on CPUs."
    assert research_task.output == "Trend: small models on CPUs."
    first, second = llm_server.chat_requests
    assert "Research Analyst" in system_prompt(first)
    assert "Technical Writer" in system_prompt(second)
    assert "Trend: small models on CPUs." in system_prompt(second)  # the previous output as context
    assert "Expected output: A report" in second.messages[-1]["content"]
    assert workflow.result is not None and len(workflow.result["task_results"]) == 2
    s.save_state({"research_complete": True, "report": result})
    assert s.restore_state()["report"] == result


def test_repeated_idempotency_key_runs_the_turn_once(server: ServerThread, llm_server: LLMServer) -> None:
    s = session(server)
    agent = s.Agent(name="Once")
    llm_server.reply("only once")
    client, ref = s._async._agents, s._async._ref

    async def twice() -> tuple[dict[str, Any], dict[str, Any]]:
        first = await client.chat(ref, "Once", "hello", idempotency_key="turn-1")
        again = await client.chat(ref, "Once", "hello", idempotency_key="turn-1")
        return first, again

    first, again = asyncio.run(twice())
    assert first["text"] == again["text"] == "only once"
    assert again["metadata"]["replayed"] is True and first["metadata"]["replayed"] is False
    assert len(llm_server.chat_requests) == 1
    assert len(s.get_events()) == 2
    assert agent.name == "Once"


def test_bad_input_is_refused_with_a_clear_error(server: ServerThread, llm_server: LLMServer) -> None:
    s = session(server)
    agent = s.Agent(name="Strict")
    with pytest.raises(InvalidArgument, match="message"):
        agent.chat("   ")
    with pytest.raises(InvalidArgument, match="tool name"):
        s.Agent(name="Bad", tools=[{"name": "no spaces allowed"}])
    with pytest.raises(InvalidArgument, match="unknown server tool"):
        s.Agent(name="Bad", tools=["launch_rockets"])
    with pytest.raises(InvalidArgument, match="unknown agent setting"):
        s.Agent(name="Bad", colour="red")
    with pytest.raises(InvalidArgument, match="agent name"):
        s.Agent(name=" padded ")
    with pytest.raises(NotFound, match="no agent named 'Ghost'"):
        s.get_agent("Ghost")
    assert llm_server.chat_requests == []
    assert s.get_events() == []


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
