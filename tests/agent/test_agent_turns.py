"""Session-bound agents end to end: the SDK, a real gRPC server with every service, and a real OpenAI-
compatible HTTP server (tests/llm_server.py) answering the real ``openai`` client from a script. The tests
check what the user gets, what reaches the model, and what ends up stored. This module: LLM failures and
retries, agents surviving a restart, serialized concurrent turns, workflows, idempotent turns and refused
input."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sessionkit import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PraisonAIAgents,
    RateLimited,
    ServiceUnavailable,
    StateConflict,
    Task,
)
from tests.agent.support import MODEL, session, settings, system_prompt
from tests.llm_server import LLMServer, Reply
from tests.servers import ServerThread


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
