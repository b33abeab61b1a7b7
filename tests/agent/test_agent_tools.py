"""Session-bound agents end to end: the SDK, a real gRPC server with every service, and a real OpenAI-
compatible HTTP server (tests/llm_server.py) answering the real ``openai`` client from a script. The tests
check what the user gets, what reaches the model, and what ends up stored. This module: client tools and
their bounds."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from tests.agent.support import session
from tests.llm_server import LLMServer, Reply, ToolCall
from tests.servers import ServerThread


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
