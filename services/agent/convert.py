"""sessionkit.v1 messages <-> the agent service's records (sessionkit_server.agent.records).

The gRPC servicer uses it for the wire. The business layer uses only its ``*_bytes`` / ``*_from_bytes``
pairs, for what it stores: a definition and an idempotent call's response are kept as their serialized
messages, so rows written before a release (and replays of them) read the same after it."""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum
from typing import TypeVar

from google.protobuf import duration_pb2

from sessionkit.jsonvalues import from_struct, to_struct
from sessionkit.state_client import SessionRef
from sessionkit.v1 import agent_pb2, common_pb2
from sessionkit_server.agent import records as r
from sessionkit_server.agent.tools import CLIENT, ToolSpec
from sessionkit_server.common.checks import duration_proto
from sessionkit_server.common.timestamps import from_proto, to_proto


def _seconds(value: duration_pb2.Duration) -> float:
    return value.ToNanoseconds() / 1e9


E = TypeVar("E", bound=IntEnum)


def enum_value(kind: type[E], value: int) -> E:
    """A proto enum's number as the record's enum. Proto enums are open: a number this server does
    not know means unspecified, which each enum's default handles (FAIL, WAIT, SHORT_TERM)."""
    try:
        return kind(value)
    except ValueError:
        return kind(0)


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


# -- sessions and definitions -------------------------------------------------------------------------


def session_ref(message: common_pb2.SessionRef) -> SessionRef:
    """The reference as sent; the business layer validates it (sessionkit_server.agent.definitions)."""
    return SessionRef(message.app_name, message.user_id, message.session_id)


def tool_specs(tools: Iterable[agent_pb2.AgentTool]) -> list[ToolSpec]:
    return [
        ToolSpec(t.name, t.description, from_struct(t.parameters), t.execution or CLIENT)  # type: ignore[arg-type]
        for t in tools
    ]


def tool_message(spec: ToolSpec) -> agent_pb2.AgentTool:
    return agent_pb2.AgentTool(
        name=spec.name,
        description=spec.description,
        parameters=to_struct(spec.parameters),
        execution=spec.execution,  # type: ignore[arg-type]
    )


def definition(message: agent_pb2.AgentDefinition) -> r.AgentDefinition:
    """A definition as sent or stored; its session and times are the server's and are not read."""
    m = message
    return r.AgentDefinition(
        name=m.name,
        role=m.role,
        goal=m.goal,
        backstory=m.backstory,
        instructions=m.instructions,
        model=m.model,
        temperature=m.temperature if m.HasField("temperature") else None,
        max_tokens=m.max_tokens,
        tools=tool_specs(m.tools),
        memory=m.memory if m.HasField("memory") else None,
        memory_write=enum_value(r.MemoryWrite, m.memory_write),
        memory_max_items=m.memory_max_items,
        knowledge=m.knowledge if m.HasField("knowledge") else None,
        knowledge_sources=list(m.knowledge_sources),
        knowledge_collections=list(m.knowledge_collections),
        knowledge_max_items=m.knowledge_max_items,
        history_max_events=m.history_max_events,
        max_tool_rounds=m.max_tool_rounds,
        options=from_struct(m.options),
    )


def definition_message(agent: r.AgentDefinition) -> agent_pb2.AgentDefinition:
    message = agent_pb2.AgentDefinition(
        name=agent.name,
        role=agent.role,
        goal=agent.goal,
        backstory=agent.backstory,
        instructions=agent.instructions,
        model=agent.model,
        max_tokens=agent.max_tokens,
        tools=[tool_message(t) for t in agent.tools],
        memory_write=int(agent.memory_write),  # type: ignore[arg-type]
        memory_max_items=agent.memory_max_items,
        knowledge_sources=agent.knowledge_sources,
        knowledge_collections=agent.knowledge_collections,
        knowledge_max_items=agent.knowledge_max_items,
        history_max_events=agent.history_max_events,
        max_tool_rounds=agent.max_tool_rounds,
    )
    if agent.temperature is not None:
        message.temperature = agent.temperature
    if agent.memory is not None:
        message.memory = agent.memory
    if agent.knowledge is not None:
        message.knowledge = agent.knowledge
    if agent.options:
        message.options.CopyFrom(to_struct(agent.options))
    if agent.session is not None:
        message.session.CopyFrom(agent.session.message)
    if agent.create_us:
        message.create_time.CopyFrom(to_proto(agent.create_us))
    if agent.update_us:
        message.update_time.CopyFrom(to_proto(agent.update_us))
    return message


def definition_bytes(agent: r.AgentDefinition) -> bytes:
    """The stored form: the message without the session and times (the row has those)."""
    stored = definition_message(agent)
    for name in ("session", "create_time", "update_time"):
        stored.ClearField(name)
    return stored.SerializeToString(deterministic=True)


def definition_from_bytes(data: bytes) -> r.AgentDefinition:
    return definition(agent_pb2.AgentDefinition.FromString(data))


def chat_options(message: agent_pb2.ChatOptions) -> r.ChatOptions:
    m = message
    return r.ChatOptions(
        busy_policy=enum_value(r.BusyPolicy, m.busy_policy),
        busy_timeout=duration_proto(m.busy_timeout, "options.busy_timeout")
        if m.HasField("busy_timeout")
        else None,
        use_memory=m.use_memory if m.HasField("use_memory") else None,
        use_knowledge=m.use_knowledge if m.HasField("use_knowledge") else None,
        model=m.model,
        temperature=m.temperature if m.HasField("temperature") else None,
        max_tokens=m.max_tokens,
        metadata=from_struct(m.metadata),
        tool_result_timeout=(
            duration_proto(m.tool_result_timeout, "options.tool_result_timeout")
            if m.HasField("tool_result_timeout")
            else None
        ),
    )


# -- turns --------------------------------------------------------------------------------------------


def client_tool_call_message(call: r.ClientToolCall) -> agent_pb2.ChatToolCall:
    return agent_pb2.ChatToolCall(
        call_id=call.call_id, tool_name=call.tool_name, arguments_json=call.arguments_json, round=call.round
    )


def tool_record_message(record: r.ToolCallRecord) -> agent_pb2.ToolCallRecord:
    return agent_pb2.ToolCallRecord(
        call_id=record.call_id,
        tool_name=record.tool_name,
        execution=record.execution,  # type: ignore[arg-type]
        arguments_json=record.arguments_json,
        result_json=record.result_json,
        error=record.error,
        round=record.round,
        latency_ms=record.latency_ms,
    )


def _tool_record(m: agent_pb2.ToolCallRecord) -> r.ToolCallRecord:
    return r.ToolCallRecord(
        call_id=m.call_id,
        tool_name=m.tool_name,
        arguments_json=m.arguments_json,
        round=m.round,
        execution=m.execution,
        result_json=m.result_json,
        error=m.error,
        latency_ms=m.latency_ms,
    )


def _usage_message(usage: r.TokenUsage) -> agent_pb2.TokenUsage:
    return agent_pb2.TokenUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def _usage(m: agent_pb2.TokenUsage) -> r.TokenUsage:
    return r.TokenUsage(m.prompt_tokens, m.completion_tokens, m.total_tokens)


_LATENCY_FIELDS = (
    "history_ms",
    "memory_ms",
    "knowledge_ms",
    "llm_ms",
    "tools_ms",
    "persistence_ms",
    "total_ms",
)


def turn_metadata_message(meta: r.TurnMetadata) -> agent_pb2.TurnMetadata:
    message = agent_pb2.TurnMetadata(
        turn_id=meta.turn_id,
        agent_name=meta.agent_name,
        model=meta.model,
        usage=_usage_message(meta.usage),
        memory_ids=meta.memory_ids,
        knowledge_chunk_ids=meta.knowledge_chunk_ids,
        latency=agent_pb2.TurnLatency(**{f: getattr(meta.latency, f) for f in _LATENCY_FIELDS}),
        tool_calls=[tool_record_message(c) for c in meta.tool_calls],
        tool_rounds=meta.tool_rounds,
        finish_reason=meta.finish_reason,
        event_ids=meta.event_ids,
        stored_memory_ids=meta.stored_memory_ids,
        replayed=meta.replayed,
    )
    if meta.start_us:
        message.start_time.CopyFrom(to_proto(meta.start_us))
    return message


def _turn_metadata(m: agent_pb2.TurnMetadata) -> r.TurnMetadata:
    return r.TurnMetadata(
        turn_id=m.turn_id,
        agent_name=m.agent_name,
        model=m.model,
        usage=_usage(m.usage),
        memory_ids=list(m.memory_ids),
        knowledge_chunk_ids=list(m.knowledge_chunk_ids),
        latency=r.TurnLatency(**{f: getattr(m.latency, f) for f in _LATENCY_FIELDS}),
        tool_calls=[_tool_record(c) for c in m.tool_calls],
        tool_rounds=m.tool_rounds,
        finish_reason=m.finish_reason,
        event_ids=list(m.event_ids),
        stored_memory_ids=list(m.stored_memory_ids),
        replayed=m.replayed,
        start_us=from_proto(m.start_time) if m.HasField("start_time") else 0,
    )


def turn_result_message(result: r.TurnResult) -> agent_pb2.ChatTurnResult:
    return agent_pb2.ChatTurnResult(text=result.text, metadata=turn_metadata_message(result.metadata))


def turn_result_bytes(result: r.TurnResult) -> bytes:
    return turn_result_message(result).SerializeToString()


def turn_result_from_bytes(data: bytes) -> r.TurnResult:
    m = agent_pb2.ChatTurnResult.FromString(data)
    return r.TurnResult(m.text, _turn_metadata(m.metadata))


# -- workflows ----------------------------------------------------------------------------------------


def workflow_request(m: agent_pb2.RunWorkflowRequest) -> r.WorkflowRequest:
    return r.WorkflowRequest(
        session=session_ref(m.session),
        tasks=[
            r.WorkflowTask(
                description=t.description,
                agent_name=t.agent_name,
                name=t.name,
                expected_output=t.expected_output,
                context_tasks=list(t.context_tasks),
            )
            for t in m.tasks
        ],
        process=m.process,
        options=chat_options(m.options),
        input=m.input,
        stream=m.stream,
        idempotency_key=m.idempotency_key,
    )


def _task_result_message(t: r.TaskResult) -> agent_pb2.WorkflowTaskResult:
    return agent_pb2.WorkflowTaskResult(
        task_index=t.task_index,
        task_name=t.task_name,
        agent_name=t.agent_name,
        output=t.output,
        metadata=turn_metadata_message(t.metadata),
    )


def workflow_result_message(result: r.WorkflowResult) -> agent_pb2.WorkflowResult:
    return agent_pb2.WorkflowResult(
        workflow_id=result.workflow_id,
        final_output=result.final_output,
        task_results=[_task_result_message(t) for t in result.task_results],
        usage=_usage_message(result.usage),
        duration=_duration(result.duration_seconds),
    )


def workflow_result_bytes(result: r.WorkflowResult) -> bytes:
    return workflow_result_message(result).SerializeToString()


def workflow_result_from_bytes(data: bytes) -> r.WorkflowResult:
    m = agent_pb2.WorkflowResult.FromString(data)
    return r.WorkflowResult(
        workflow_id=m.workflow_id,
        final_output=m.final_output,
        task_results=[
            r.TaskResult(t.task_index, t.task_name, t.agent_name, t.output, _turn_metadata(t.metadata))
            for t in m.task_results
        ],
        usage=_usage(m.usage),
        duration_seconds=_seconds(m.duration),
    )


def workflow_event_message(event: r.WorkflowEvent) -> agent_pb2.RunWorkflowResponse:
    if isinstance(event, r.TaskStarted):
        return agent_pb2.RunWorkflowResponse(
            task_started=agent_pb2.WorkflowTaskStarted(
                task_index=event.task_index,
                task_name=event.task_name,
                agent_name=event.agent_name,
                turn_id=event.turn_id,
            )
        )
    if isinstance(event, r.TaskTextDelta):
        return agent_pb2.RunWorkflowResponse(
            text_delta=agent_pb2.WorkflowTextDelta(task_index=event.task_index, text=event.text)
        )
    if isinstance(event, r.TaskResult):
        return agent_pb2.RunWorkflowResponse(task_result=_task_result_message(event))
    return agent_pb2.RunWorkflowResponse(result=workflow_result_message(event))
