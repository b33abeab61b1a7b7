"""The scripted OpenAI-compatible test server answers the real ``openai`` client as an OpenAI endpoint
would: completions, models, errors with Retry-After, streaming and tool calls, and records requests."""

from __future__ import annotations

import json

import openai
import pytest

from tests.llm_server import LLMServer, Reply, ToolCall, llm_server_fixture  # noqa: F401 - the llm_server fixture


def client(server: LLMServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=10)


def test_scripted_replies_in_order_and_requests_recorded(llm_server: LLMServer) -> None:
    llm_server.reply("first").reply_json({"operations": []})
    with client(llm_server) as c:
        one = c.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hello there"}], temperature=0
        )
        two = c.chat.completions.create(
            model="m2",
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "again"}],
            response_format={"type": "json_object"},
        )
        models = c.models.list()
    assert one.choices[0].message.content == "first" and one.model == "m1"
    assert json.loads(two.choices[0].message.content or "") == {"operations": []}
    assert [m.id for m in models.data] == ["test-model"]
    first, second = llm_server.chat_requests
    assert first.body["model"] == "m1" and first.messages == [{"role": "user", "content": "hello there"}]
    assert first.headers["authorization"] == "Bearer sk-test"
    assert second.body["response_format"] == {"type": "json_object"}
    assert "be brief" in second.prompt and "again" in second.prompt
    assert llm_server.pending == 0


def test_errors_carry_status_and_retry_after(llm_server: LLMServer) -> None:
    llm_server.fail(429, "slow down", retry_after=2).fail(500)
    with client(llm_server) as c:
        with pytest.raises(openai.RateLimitError) as limited:
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.InternalServerError):
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.InternalServerError) as unscripted:
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert limited.value.response.headers["retry-after"] == "2"
    assert "slow down" in str(limited.value)
    assert "no scripted reply" in str(unscripted.value)
    assert len(llm_server.chat_requests) == 3


def test_streaming_and_tool_calls(llm_server: LLMServer) -> None:
    llm_server.reply("Hello streaming  world")
    llm_server.script(Reply(tool_calls=[ToolCall("lookup", {"city": "Lisbon"}, id="call_1")]))
    with client(llm_server) as c:
        stream = c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
        tools = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "weather?"}])
    assert "".join(pieces) == "Hello streaming  world" and len([p for p in pieces if p]) > 1
    choice = tools.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.id == "call_1" and call.function.name == "lookup"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Lisbon"}  # type: ignore[union-attr]
