"""Typed async client of the agent service (used by the SDK's Agent, the CLI and the gateway). Results
are plain dicts: ``{"text": ..., "metadata": {...}}`` with the turn's metadata as JSON.

Every turn carries an idempotency key (a fresh uuid4 per call unless given), kept across retries, so a
turn whose reply was lost runs once. ChatStream (:meth:`AgentClient.chat_stream`) is retried only
until the server has started the turn; after that a failure is the caller's to see."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from sessionkit.errors import FieldViolation, InvalidArgument
from sessionkit.jsonvalues import check_json, to_struct
from sessionkit.state_client import SessionRef
from sessionkit.tool_schema import function_schema, run_tool
from sessionkit.transport import Transport
from sessionkit.v1 import agent_pb2, agent_pb2_grpc

Stub = agent_pb2_grpc.AgentServiceStub
IF_EXISTS = {
    "fail": agent_pb2.CreateAgentRequest.FAIL,
    "replace": agent_pb2.CreateAgentRequest.REPLACE,
    "get": agent_pb2.CreateAgentRequest.GET,
}
MEMORY_WRITE = {
    "none": agent_pb2.AgentDefinition.MEMORY_WRITE_NONE,
    "short": agent_pb2.AgentDefinition.MEMORY_WRITE_SHORT_TERM,
    "extract": agent_pb2.AgentDefinition.MEMORY_WRITE_EXTRACT,
}
_EOF = grpc.aio.EOF  # type: ignore[attr-defined]


def to_dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def metadata_dict(message: agent_pb2.TurnMetadata) -> dict[str, Any]:
    """A turn's metadata as JSON, with its 64-bit counts as ints (protobuf's JSON makes them strings)."""
    out = to_dict(message)
    out["usage"] = {k: int(v) for k, v in out["usage"].items()}
    out["event_ids"] = [int(v) for v in out["event_ids"]]
    return out


def tool_message(tool: Any) -> agent_pb2.AgentTool:
    """A tool declaration: a built-in's name ("search_memory"), a Python callable (CLIENT), or a dict
    ``{"name", "description", "parameters"}`` (CLIENT)."""
    if isinstance(tool, str):
        return agent_pb2.AgentTool(name=tool, execution=agent_pb2.AgentTool.SERVER)
    if callable(tool):
        tool = function_schema(tool)
    if not isinstance(tool, Mapping) or not isinstance(tool.get("name"), str):
        raise InvalidArgument(
            f"invalid tool {tool!r}",
            violations=[FieldViolation("tools", "a built-in tool's name, a function, or a dict with a name")],
        )
    parameters = check_json(dict(tool.get("parameters") or {}), "tools.parameters")
    return agent_pb2.AgentTool(
        name=tool["name"],
        description=str(tool.get("description", "")),
        parameters=to_struct(parameters),  # type: ignore[arg-type]
        execution=agent_pb2.AgentTool.CLIENT,
    )


def definition_message(definition: Mapping[str, Any]) -> agent_pb2.AgentDefinition:
    """An AgentDefinition from a dict: name, role, goal, backstory, instructions, model, temperature,
    max_tokens, tools, memory, memory_write ("none"|"short"|"extract"), memory_max_items, knowledge,
    knowledge_sources, knowledge_collections, knowledge_max_items, history_max_events, max_tool_rounds,
    options."""
    d = dict(definition)
    message = agent_pb2.AgentDefinition(name=str(d.pop("name", "")))
    for key in ("role", "goal", "backstory", "instructions", "model"):
        value = d.pop(key, None)
        if value is not None:
            if not isinstance(value, str):
                raise InvalidArgument(f"{key} must be a str", violations=[FieldViolation(key, "a string")])
            setattr(message, key, value)
    for key in (
        "max_tokens",
        "memory_max_items",
        "knowledge_max_items",
        "history_max_events",
        "max_tool_rounds",
    ):
        value = d.pop(key, None)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidArgument(f"{key} must be an int", violations=[FieldViolation(key, "an integer")])
            setattr(message, key, value)
    temperature = d.pop("temperature", None)
    if temperature is not None:
        message.temperature = float(temperature)
    for key in ("memory", "knowledge"):
        value = d.pop(key, None)
        if value is not None:
            setattr(message, key, bool(value))
    write = d.pop("memory_write", None)
    if write is not None:
        if write not in MEMORY_WRITE:
            raise InvalidArgument(
                f"invalid memory_write {write!r}",
                violations=[FieldViolation("memory_write", f"one of {', '.join(MEMORY_WRITE)}")],
            )
        message.memory_write = MEMORY_WRITE[write]
    for key in ("knowledge_sources", "knowledge_collections"):
        values = d.pop(key, None) or []
        if isinstance(values, str) or not all(isinstance(v, str) for v in values):
            raise InvalidArgument(f"{key} must be a list of str", violations=[FieldViolation(key, "names")])
        getattr(message, key).extend(values)
    message.tools.extend(tool_message(t) for t in d.pop("tools", None) or [])
    options = d.pop("options", None)
    if options:
        message.options.CopyFrom(to_struct(check_json(dict(options), "options")))  # type: ignore[arg-type]
    if d:
        raise InvalidArgument(
            f"unknown agent setting(s) {sorted(d)}",
            violations=[FieldViolation(k, "not an agent setting") for k in sorted(d)],
        )
    return message


#: The longest busy_timeout / tool_timeout (s): the server's bound on any duration (ten years).
MAX_OPTION_SECONDS = 10 * 365 * 86400
MAX_INT32 = 2**31 - 1


def _option_number(
    d: dict[str, Any], key: str, low: float, high: float, integer: bool = False
) -> float | None:
    """Pop option ``key``: a finite number (an integer when ``integer``) within [low, high], or None."""
    value = d.pop(key, None)
    if value is None:
        return None
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(
            f"chat option {key} must be {kind}",
            violations=[FieldViolation(f"options.{key}", f"{kind}, not {type(value).__name__}")],
        )
    if not math.isfinite(value) or not low <= value <= high or (integer and value != int(value)):
        raise InvalidArgument(
            f"chat option {key} is out of range",
            violations=[FieldViolation(f"options.{key}", f"{kind} from {low:g} to {high:g}")],
        )
    return value


def options_message(options: Mapping[str, Any] | None) -> agent_pb2.ChatOptions:
    """ChatOptions from a dict: busy ("wait"|"fail"), busy_timeout (s), use_memory, use_knowledge,
    model, temperature, max_tokens, metadata, tool_timeout (s). A value of the wrong type or out of
    range is InvalidArgument naming ``options.<key>``."""
    if options is not None and not isinstance(options, Mapping):
        raise InvalidArgument(
            "chat options must be a mapping", violations=[FieldViolation("options", "a JSON object")]
        )
    d = dict(options or {})
    message = agent_pb2.ChatOptions()
    busy = d.pop("busy", None)
    if busy is not None:
        if busy not in ("wait", "fail"):
            raise InvalidArgument(
                "busy must be 'wait' or 'fail'", violations=[FieldViolation("options.busy", "wait|fail")]
            )
        message.busy_policy = (
            agent_pb2.ChatOptions.WAIT if busy == "wait" else agent_pb2.ChatOptions.FAIL_FAST
        )
    for key, field in (("busy_timeout", "busy_timeout"), ("tool_timeout", "tool_result_timeout")):
        seconds = _option_number(d, key, 0, MAX_OPTION_SECONDS)
        if seconds is not None:
            getattr(message, field).FromNanoseconds(int(seconds * 1e9))
    for key in ("use_memory", "use_knowledge"):
        value = d.pop(key, None)
        if value is not None:
            setattr(message, key, bool(value))
    model = d.pop("model", None)
    if model is not None:
        if not isinstance(model, str):
            raise InvalidArgument(
                "chat option model must be a string",
                violations=[FieldViolation("options.model", f"a model name, not {type(model).__name__}")],
            )
        message.model = model
    temperature = _option_number(d, "temperature", 0, 2)
    if temperature is not None:
        message.temperature = float(temperature)
    max_tokens = _option_number(d, "max_tokens", 0, MAX_INT32, integer=True)
    if max_tokens:
        message.max_tokens = int(max_tokens)
    metadata = d.pop("metadata", None)
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InvalidArgument(
            "chat option metadata must be a JSON object",
            violations=[FieldViolation("options.metadata", f"a JSON object, not {type(metadata).__name__}")],
        )
    if metadata:
        message.metadata.CopyFrom(to_struct(check_json(dict(metadata), "options.metadata")))  # type: ignore[arg-type]
    if d:
        raise InvalidArgument(
            f"unknown chat option(s) {sorted(d)}",
            violations=[FieldViolation(f"options.{k}", "not a chat option") for k in sorted(d)],
        )
    return message


def _task_dict(task: agent_pb2.WorkflowTaskResult) -> dict[str, Any]:
    return {**to_dict(task), "metadata": metadata_dict(task.metadata)}


def workflow_dict(kind: str, body: Any) -> dict[str, Any]:
    if kind == "task_result":
        return _task_dict(body)
    out = to_dict(body)
    if kind == "result":
        out["task_results"] = [_task_dict(t) for t in body.task_results]
        out["usage"] = {k: int(v) for k, v in out["usage"].items()}
    return out


def _key(idempotency_key: str | None) -> str:
    return idempotency_key or uuid.uuid4().hex


class AgentClient:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def _call(self, method: str, request: Any) -> Any:
        return await self.transport.unary("agent", Stub, method, request)

    async def create_agent(
        self, ref: SessionRef, definition: Mapping[str, Any], if_exists: str = "get"
    ) -> dict[str, Any]:
        if if_exists not in IF_EXISTS:
            raise InvalidArgument(
                f"invalid if_exists {if_exists!r}",
                violations=[FieldViolation("if_exists", "fail|replace|get")],
            )
        agent = definition_message(definition)
        # Ignored by the server, but set: an auth check reads every SessionRef of a request.
        agent.session.CopyFrom(ref.message)
        reply = await self._call(
            "CreateAgent",
            agent_pb2.CreateAgentRequest(
                session=ref.message,
                agent=agent,
                if_exists=IF_EXISTS[if_exists],
                idempotency_key=_key(None),
            ),
        )
        out = to_dict(reply.agent)
        out["created"] = reply.created
        return out

    async def get_agent(self, ref: SessionRef, name: str) -> dict[str, Any]:
        reply = await self._call("GetAgent", agent_pb2.GetAgentRequest(session=ref.message, agent_name=name))
        return to_dict(reply.agent)

    async def list_agents(self, ref: SessionRef) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        token = ""
        while True:
            reply = await self._call(
                "ListAgents",
                agent_pb2.ListAgentsRequest(session=ref.message, page_size=1000, page_token=token),
            )
            out.extend(to_dict(a) for a in reply.agents)
            token = reply.next_page_token
            if not token:
                return out

    async def delete_agent(self, ref: SessionRef, name: str, allow_missing: bool = True) -> bool:
        reply = await self._call(
            "DeleteAgent",
            agent_pb2.DeleteAgentRequest(
                session=ref.message, agent_name=name, allow_missing=allow_missing, idempotency_key=_key(None)
            ),
        )
        return bool(reply.deleted)

    async def chat(
        self,
        ref: SessionRef,
        agent_name: str,
        message: str,
        *,
        options: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """One turn without client tools: ``{"text": ..., "metadata": {...}}``."""
        _check_message(message)
        reply = await self._call(
            "Chat",
            agent_pb2.ChatRequest(
                session=ref.message,
                agent_name=agent_name,
                message=message,
                options=options_message(options),
                idempotency_key=_key(idempotency_key),
            ),
        )
        return {"text": reply.text, "metadata": metadata_dict(reply.metadata)}

    async def chat_stream(
        self,
        ref: SessionRef,
        agent_name: str,
        message: str,
        *,
        stream: bool = True,
        tools: Mapping[str, Callable[..., Any]] | None = None,
        offer: list[Callable[..., Any]] | None = None,
        options: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """One turn over ChatStream, yielding ``{"type": "started"|"delta"|"tool_call"|"result", ...}``;
        the last is ``{"type": "result", "text": ..., "metadata": {...}}``. ``tools``: the functions
        that run the agent's CLIENT tools, by name; ``offer``: more functions offered for this turn
        only. Closing the iterator early cancels the turn."""
        _check_message(message)
        functions = dict(tools or {})
        extra = [tool_message(fn) for fn in offer or []]
        functions.update({t.name: fn for t, fn in zip(extra, offer or [], strict=True)})
        start = agent_pb2.ChatStreamStart(
            session=ref.message,
            agent_name=agent_name,
            message=message,
            options=options_message(options),
            stream=stream,
            tools=extra,
            idempotency_key=_key(idempotency_key),
        )
        holder: list[Any] = []

        async def open_stream(remaining: float) -> Any:
            stub = await self.transport.stub("agent", Stub)
            call = stub.ChatStream(timeout=remaining)
            holder[:] = [call]
            try:
                await call.write(agent_pb2.ChatStreamRequest(start=start))
                return await call.read()
            except grpc.RpcError as error:
                raise self.transport._error("agent", error) from None

        first = await self.transport.retry(open_stream)
        call = holder[0]
        write_lock = asyncio.Lock()
        running: set[asyncio.Task[None]] = set()

        async def answer(request: agent_pb2.ChatToolCall) -> None:
            fn = functions.get(request.tool_name)
            result: str | None
            error: str | None
            if fn is None:
                result, error = None, f"no function {request.tool_name!r} in this client"
            else:
                result, error = await run_tool(fn, request.arguments_json)
            outcome = (
                agent_pb2.ChatToolResult(call_id=request.call_id, error=error)
                if error is not None
                else agent_pb2.ChatToolResult(call_id=request.call_id, result_json=result)
            )
            async with write_lock:
                # The turn may have ended (a timed-out tool's late answer): nothing to tell it then.
                if not call.done():
                    await call.write(agent_pb2.ChatStreamRequest(tool_result=outcome))

        try:
            message_ = first
            while message_ is not _EOF:
                kind = message_.WhichOneof("kind")
                if kind == "started":
                    yield {"type": "started", "turn_id": message_.started.turn_id}
                elif kind == "text_delta":
                    yield {
                        "type": "delta",
                        "text": message_.text_delta.text,
                        "round": message_.text_delta.round,
                    }
                elif kind == "tool_call":
                    task = asyncio.create_task(answer(message_.tool_call))
                    running.add(task)
                    task.add_done_callback(running.discard)
                    yield {"type": "tool_call", **to_dict(message_.tool_call)}
                elif kind == "tool_call_completed":
                    yield {"type": "tool_call_completed", **to_dict(message_.tool_call_completed)}
                elif kind == "result":
                    async with write_lock:
                        await call.done_writing()
                    yield {
                        "type": "result",
                        "text": message_.result.text,
                        "metadata": metadata_dict(message_.result.metadata),
                    }
                try:
                    message_ = await call.read()
                except grpc.RpcError as error:
                    raise self.transport._error("agent", error) from None
        finally:
            for task in running:
                task.cancel()
            call.cancel()

    async def run_workflow(
        self,
        ref: SessionRef,
        tasks: Sequence[Mapping[str, Any]],
        *,
        input: str = "",
        stream: bool = False,
        options: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """A sequential workflow: yields task_started, delta, task_result and, last, result events.
        ``tasks``: dicts with name, description, agent_name, expected_output, context_tasks."""
        request = agent_pb2.RunWorkflowRequest(
            session=ref.message,
            tasks=[
                agent_pb2.WorkflowTask(
                    name=t.get("name", ""),
                    description=t.get("description", ""),
                    agent_name=t.get("agent_name", ""),
                    expected_output=t.get("expected_output", ""),
                    context_tasks=list(t.get("context_tasks", [])),
                )
                for t in tasks
            ],
            process=agent_pb2.RunWorkflowRequest.SEQUENTIAL,
            options=options_message(options),
            input=input,
            stream=stream,
            idempotency_key=_key(idempotency_key),
        )
        async for message in self.transport.stream("agent", Stub, "RunWorkflow", request):
            kind = message.WhichOneof("kind")
            body = getattr(message, kind)
            if kind == "text_delta":
                yield {"type": "delta", "task_index": body.task_index, "text": body.text}
            else:
                yield {"type": kind, **workflow_dict(kind, body)}


def _check_message(message: Any) -> None:
    if not isinstance(message, str) or not message.strip():
        raise InvalidArgument(
            "the message must be a non-empty str", violations=[FieldViolation("message", "must not be empty")]
        )
