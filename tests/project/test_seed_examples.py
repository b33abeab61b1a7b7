"""The seed's agent examples (../shared/seed/session-module.md), as written there but for the import
line, against running services (SESSIONKIT_ADDRESS) with an OpenAI-compatible LLM that answers every
request. Each example's own variables are then checked for what the seed says they hold."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessionkit_server.common.config import ServerSettings
from tests.llm_server import LLMServer, Reply, llm_server_fixture  # noqa: F401 - fixture
from tests.servers import ServerThread

IMPORT = "from sessionkit import Session, Task, PraisonAIAgents\n"

STATEFUL_AGENT_WITH_MEMORY = """
session = Session(
 session_id="assistant_session",

)

agent = session.Agent(
 name="Personal Assistant",
 role="Helpful AI assistant",
 instructions="Remember user preferences and past conversations"
)

response = agent.chat("My favorite color is blue")
session.store_long_memory("User's favorite color: blue", quality_score=0.9)

context = session.get_memory_context("What's my favorite color?")
"""

MULTI_USER = """
session = Session(
 session_id="app_main",
 user_id="user_123"
)

session.set_state("theme", "dark")
session.set_state("language", "en")

session.store_long_memory(
 "User prefers technical explanations",
 quality_score=0.8
)

agent = session.Agent(
 name="User Assistant",
 instructions=f"User {session.user_id} prefers {session.get_state('theme')} theme"
)
"""

KNOWLEDGE_BASE = """
session = Session(session_id="doc_assistant_001")

session.add_knowledge("technical_manual.pdf")
session.add_knowledge("Quick reference: API key is required for all requests")

assistant = session.Agent(
 name="DocBot",
 role="Documentation Assistant",
 knowledge=["technical_manual.pdf"]
)

context = session.get_context("How do I authenticate?")
response = assistant.chat(f"Based on this context: {context}\\n\\nHow do I authenticate?")
"""

MULTI_AGENT_WORKFLOW = """
def web_search_tool(query: str) -> str:
    \"\"\"Search the web.\"\"\"
    return "AI trends: agents, small models"

session = Session(session_id="research_project_001")

researcher = session.Agent(
 name="Researcher",
 role="Research Analyst",
 tools=[web_search_tool]
)

writer = session.Agent(
 name="Writer",
 role="Technical Writer"
)

research_task = Task(
 description="Research AI trends for 2024",
 agent=researcher
)

writing_task = Task(
 description="Write a report based on research",
 agent=writer
)

workflow = PraisonAIAgents(
 agents=[researcher, writer],
 tasks=[research_task, writing_task],
 memory=session.memory,
 process="sequential"
)

result = workflow.start()
session.save_state({"research_complete": True, "report": result})
"""


@pytest.fixture
def services(
    tmp_path: Path, llm_server: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ServerThread]:
    llm_server.fallback = lambda request: Reply(
        content=f"(answer to: {request.messages[-1]['content'][:60]})"
    )
    settings = ServerSettings(
        port=0,
        data_dir=tmp_path / "data",
        log_format="text",
        llm_base_url=llm_server.base_url,
        llm_model="test-model",
        llm_api_key="sk-test",
    )
    thread = ServerThread(settings).start()
    monkeypatch.setenv("SESSIONKIT_ADDRESS", thread.address)
    monkeypatch.chdir(tmp_path)
    yield thread
    thread.stop()


def run(example: str) -> dict[str, Any]:
    scope: dict[str, Any] = {}
    exec(compile(IMPORT + example, "<seed example>", "exec"), scope)
    return scope


def test_stateful_agent_with_memory(services: ServerThread, llm_server: LLMServer) -> None:
    scope = run(STATEFUL_AGENT_WITH_MEMORY)
    assert scope["response"] == "(answer to: My favorite color is blue)"
    assert "User's favorite color: blue" in scope["context"]


def test_multi_user_sessions(services: ServerThread, llm_server: LLMServer) -> None:
    scope = run(MULTI_USER)
    agent = scope["agent"]
    assert agent.instructions == "User user_123 prefers dark theme"
    assert agent.chat("Explain gRPC") == "(answer to: Explain gRPC)"
    prompt = llm_server.chat_requests[-1].messages[0]["content"]
    assert "prefers dark theme" in prompt and "User prefers technical explanations" in prompt


def test_session_with_knowledge_base(services: ServerThread, llm_server: LLMServer, tmp_path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.multi_cell(0, 8, "Authentication: send your API key in the Authorization header as a Bearer token.")
    pdf.output(str(tmp_path / "technical_manual.pdf"))
    scope = run(KNOWLEDGE_BASE)
    assert "Bearer token" in scope["context"]
    assert scope["response"].startswith("(answer to: Based on this context:")
    prompt = llm_server.chat_requests[-1].messages[0]["content"]
    # The agent searched only the manual it names, not the quick reference.
    assert "Bearer token" in prompt and "Quick reference" not in prompt


def test_multi_agent_session_workflow(services: ServerThread, llm_server: LLMServer) -> None:
    scope = run(MULTI_AGENT_WORKFLOW)
    assert scope["result"] == "(answer to: Write a report based on research)"
    assert scope["session"].restore_state() == {"research_complete": True, "report": scope["result"]}
    researcher_prompt = llm_server.chat_requests[0].messages[0]["content"]
    writer_prompt = llm_server.chat_requests[1].messages[0]["content"]
    assert "Research Analyst" in researcher_prompt
    assert "(answer to: Research AI trends for 2024)" in writer_prompt  # the research, passed along
