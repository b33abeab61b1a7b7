"""The LLM part of a turn: call the model, run the tools it asks for, give it their results, and again,
for up to max_tool_rounds rounds (the last round offers no tools, so it must answer).

A round's tool calls run concurrently. SERVER tools (sessionkit_server.agent.tools.BUILTINS) act on the
turn's own session through the same clients any caller uses; CLIENT tools are handed to the TurnIO
(ChatStream sends them to the caller). A failing tool does not fail the turn: the model gets the error
as the tool's result."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from sessionkit.errors import SessionKitError
from sessionkit.state_client import SessionRef
from sessionkit_server.agent.latency import ms
from sessionkit_server.agent.llm import ChatModel, LLMReply, ToolCallRequest
from sessionkit_server.agent.records import ClientToolCall, ToolCallRecord, TurnMetadata
from sessionkit_server.agent.tools import SERVER, ToolSpec, parse_arguments, result_json
from sessionkit_server.agent.turn_io import TurnIO
from sessionkit_server.agent.upstream import Upstream


@dataclass
class Rounds:
    """One turn's LLM rounds: what is fixed for all of them."""

    up: Upstream
    ref: SessionRef
    client: ChatModel
    model: str
    tools: list[ToolSpec]
    params: dict[str, Any]
    stream: bool
    io: TurnIO
    max_rounds: int
    tool_timeout: float

    async def run(self, messages: list[dict[str, Any]], meta: TurnMetadata) -> tuple[str, str]:
        """Talk with the model until it answers: (text, finish_reason). Appends to ``messages`` and
        fills ``meta``'s usage, tool calls and LLM and tool latencies."""
        functions = [t.function() for t in self.tools]
        by_name = {t.name: t for t in self.tools}
        lat = meta.latency
        for round_ in range(self.max_rounds + 1):
            offer = functions if functions and round_ < self.max_rounds else None

            async def on_delta(text: str, r: int = round_) -> None:
                await self.io.delta(text, r)

            t0 = time.perf_counter()
            try:
                reply: LLMReply = await self.client.complete(
                    self.model,
                    messages,
                    tools=offer,
                    params=self.params,
                    on_delta=on_delta if self.stream else None,
                )
            finally:
                lat.llm_ms += ms(time.perf_counter() - t0)
            meta.usage.add(reply.prompt_tokens, reply.completion_tokens)
            if not reply.tool_calls:
                return reply.text, reply.finish_reason or "stop"
            if offer is None:
                return reply.text, "max_tool_rounds"
            meta.tool_rounds = round_ + 1
            messages.append(
                {
                    "role": "assistant",
                    "content": reply.text or None,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments},
                        }
                        for c in reply.tool_calls
                    ],
                }
            )
            t0 = time.perf_counter()
            try:
                records = await asyncio.gather(
                    *(self._tool(by_name.get(c.name), c, round_) for c in reply.tool_calls)
                )
            finally:
                lat.tools_ms += ms(time.perf_counter() - t0)
            for call, record in zip(reply.tool_calls, records, strict=True):
                meta.tool_calls.append(record)
                await self.io.tool_completed(record)
                content = record.result_json if not record.error else json.dumps({"error": record.error})
                messages.append({"role": "tool", "tool_call_id": call.id, "content": content})
        raise AssertionError("unreachable")  # pragma: no cover - the last round offers no tools

    async def _tool(self, spec: ToolSpec | None, call: ToolCallRequest, round_: int) -> ToolCallRecord:
        record = ToolCallRecord(
            call_id=call.id, tool_name=call.name, arguments_json=call.arguments, round=round_
        )
        t0 = time.perf_counter()
        try:
            if spec is None:
                raise ValueError(f"unknown tool {call.name!r}")
            record.execution = spec.execution
            if spec.execution == SERVER:
                record.result_json = result_json(
                    await server_tool(self.up, self.ref, spec.name, parse_arguments(call.arguments))
                )
            else:
                request = ClientToolCall(call.id, call.name, call.arguments, round_)
                result, error = await self.io.client_tool(request, self.tool_timeout)
                if error is not None:
                    raise ValueError(error)
                record.result_json = result_json(json.loads(result or "null"))
        except (ValueError, SessionKitError) as error:
            # The model gets the failure as the tool's result and the turn goes on.
            record.error = str(error) or type(error).__name__
            record.result_json = ""
        record.latency_ms = ms(time.perf_counter() - t0)
        return record


async def server_tool(up: Upstream, ref: SessionRef, name: str, args: dict[str, Any]) -> Any:
    """Run a built-in tool on the turn's session."""
    limit = args.get("limit", 5)
    if not isinstance(limit, int) or not 1 <= limit <= 20:
        limit = 5
    if name == "search_memory":
        if up.memory is None:
            raise ValueError("memory is not served here")
        hits = await up.memory.search(ref, _str_arg(args, "query"), "all", limit)
        return [{"text": h["text"], "type": h["memory_type"], "score": round(h["score"], 4)} for h in hits]
    if name == "search_knowledge":
        if up.knowledge is None:
            raise ValueError("knowledge is not served here")
        hits = await up.knowledge.search(ref, _str_arg(args, "query"), limit, scopes=["session", "user"])
        return [
            {"text": h["text"], "source": h["source"]["name"], "score": round(h["score"], 4)} for h in hits
        ]
    if name == "get_state":
        state, _ = await up.state.get_state(ref, [_str_arg(args, "key")])
        return state.get(args["key"])
    if name == "set_state":
        key = _str_arg(args, "key")
        if "value" not in args:
            raise ValueError("missing argument 'value'")
        await up.state.set_value(ref, key, args["value"])
        return {"ok": True}
    raise ValueError(f"unknown tool {name!r}")


def _str_arg(args: dict[str, Any], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"argument {name!r} must be a non-empty string")
    return value
