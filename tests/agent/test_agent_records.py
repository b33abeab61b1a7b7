"""The agent's records and the sessionkit.v1 messages (sessionkit_server.agent.convert): nothing is lost
either way, and the stored forms (a definition row, an idempotent call's response) are the bytes the
service has always written, so rows and replays from before the records read the same."""

from __future__ import annotations

import ast
from pathlib import Path

from google.protobuf.message import Message

from sessionkit.jsonvalues import to_struct
from sessionkit.state_client import SessionRef
from sessionkit.v1 import agent_pb2, common_pb2
from sessionkit_server.agent import convert
from sessionkit_server.agent import records as r


def _every_field_set(message: Message, skip: frozenset[str] = frozenset()) -> None:
    """Guards the fixtures below: a field added to the proto must be added here, and so to convert."""
    present = {f.name for f, _ in message.ListFields()}
    missing = {f.name for f in message.DESCRIPTOR.fields} - present - skip
    assert not missing, f"set {sorted(missing)} in the test message (and convert them)"


def full_definition() -> agent_pb2.AgentDefinition:
    return agent_pb2.AgentDefinition(
        name="Research Assistant",
        role="Researcher",
        goal="Find things",
        backstory="Once upon a time",
        instructions="Be brief",
        model="test-model",
        temperature=0.0,  # set, though 0: optional fields keep "set to the default" apart from unset
        max_tokens=300,
        tools=[
            agent_pb2.AgentTool(
                name="lookup",
                description="Looks up",
                parameters=to_struct({"type": "object", "properties": {"q": {"type": "string"}}}),
                execution=agent_pb2.AgentTool.CLIENT,
            ),
            agent_pb2.AgentTool(
                name="get_state",
                description="Read one value",
                parameters=to_struct({"type": "object", "properties": {}}),
                execution=agent_pb2.AgentTool.SERVER,
            ),
        ],
        memory=False,
        memory_write=agent_pb2.AgentDefinition.MEMORY_WRITE_EXTRACT,
        memory_max_items=7,
        knowledge=True,
        knowledge_sources=["handbook"],
        knowledge_collections=["shared"],
        knowledge_max_items=9,
        history_max_events=11,
        max_tool_rounds=3,
        options={"top_p": 0.5, "stop": ["END"]},
    )


def test_a_definition_converts_both_ways_without_loss() -> None:
    message = full_definition()
    message.session.CopyFrom(common_pb2.SessionRef(app_name="app", user_id="alice", session_id="s1"))
    message.create_time.FromMicroseconds(1_700_000_000_000_001)
    message.update_time.FromMicroseconds(1_700_000_000_000_002)
    _every_field_set(message)

    record = convert.definition(message)
    assert record.temperature == 0.0 and record.memory is False and record.knowledge is True
    assert record.memory_write is r.MemoryWrite.EXTRACT
    assert record.options == {"top_p": 0.5, "stop": ["END"]}
    record.session = SessionRef("app", "alice", "s1")
    record.create_us, record.update_us = 1_700_000_000_000_001, 1_700_000_000_000_002
    assert convert.definition_message(record) == message


def test_unset_optional_fields_stay_unset() -> None:
    record = convert.definition(agent_pb2.AgentDefinition(name="Plain"))
    assert (record.temperature, record.memory, record.knowledge) == (None, None, None)
    message = convert.definition_message(record)
    for name in ("temperature", "memory", "knowledge", "session", "create_time", "update_time", "options"):
        assert not message.HasField(name), name


def test_a_stored_definition_is_the_bytes_the_service_always_wrote() -> None:
    # What the service stored before it had records: the request's message with the server's fields
    # cleared, serialized deterministically.
    sent = full_definition()
    sent.session.session_id = "s1"
    sent.create_time.FromMicroseconds(5)
    before = agent_pb2.AgentDefinition()
    before.CopyFrom(sent)
    for name in ("session", "create_time", "update_time"):
        before.ClearField(name)
    stored = before.SerializeToString(deterministic=True)

    assert convert.definition_bytes(convert.definition(sent)) == stored
    assert convert.definition_bytes(convert.definition_from_bytes(stored)) == stored


def full_metadata(turn_id: str = "t1") -> agent_pb2.TurnMetadata:
    meta = agent_pb2.TurnMetadata(
        turn_id=turn_id,
        agent_name="Bot",
        model="test-model",
        usage=agent_pb2.TokenUsage(prompt_tokens=10, completion_tokens=5, total_tokens=15),
        memory_ids=["m1"],
        knowledge_chunk_ids=["c1", "c2"],
        latency=agent_pb2.TurnLatency(
            history_ms=1.5,
            memory_ms=2.5,
            knowledge_ms=3.5,
            llm_ms=4.5,
            tools_ms=5.5,
            persistence_ms=6.5,
            total_ms=30.25,
        ),
        tool_calls=[
            agent_pb2.ToolCallRecord(
                call_id="call-1",
                tool_name="lookup",
                execution=agent_pb2.AgentTool.CLIENT,
                arguments_json='{"q": "x"}',
                result_json='"found"',
                round=1,
                latency_ms=0.75,
            ),
            agent_pb2.ToolCallRecord(
                call_id="call-2", tool_name="nope", arguments_json="{}", error="unknown tool", round=2
            ),
        ],
        tool_rounds=2,
        finish_reason="stop",
        event_ids=[4, 5, 6],
        stored_memory_ids=["m2"],
        replayed=True,
    )
    meta.start_time.FromMicroseconds(1_700_000_000_123_456)
    _every_field_set(meta)
    _every_field_set(meta.latency)
    _every_field_set(meta.tool_calls[0], frozenset({"error"}))
    return meta


def test_a_turn_result_replays_exactly() -> None:
    result = agent_pb2.ChatTurnResult(text="Hello", metadata=full_metadata())
    _every_field_set(result)
    data = result.SerializeToString()
    record = convert.turn_result_from_bytes(data)
    assert record.metadata.tool_calls[1].execution == 0 and record.metadata.tool_calls[1].error
    assert convert.turn_result_message(record) == result
    assert convert.turn_result_bytes(record) == data


def test_a_workflow_result_replays_exactly() -> None:
    task = agent_pb2.WorkflowTaskResult(
        task_index=1, task_name="write", agent_name="Writer", output="A report", metadata=full_metadata("t2")
    )
    _every_field_set(task)
    result = agent_pb2.WorkflowResult(
        workflow_id="w1",
        final_output="A report",
        task_results=[task],
        usage=agent_pb2.TokenUsage(prompt_tokens=1, completion_tokens=2, total_tokens=3),
    )
    result.duration.FromNanoseconds(1_250_000_000)
    _every_field_set(result)
    record = convert.workflow_result_from_bytes(result.SerializeToString())
    assert record.duration_seconds == 1.25
    assert convert.workflow_result_message(record) == result
    sent = convert.workflow_event_message(record)
    assert sent.WhichOneof("kind") == "result" and sent.result == result
    assert convert.workflow_event_message(record.task_results[0]).task_result == task


def test_chat_options_durations_are_seconds_and_unset_stays_none() -> None:
    options = agent_pb2.ChatOptions(busy_policy=agent_pb2.ChatOptions.FAIL_FAST, use_memory=False)
    options.busy_timeout.FromMilliseconds(1500)
    record = convert.chat_options(options)
    assert record.busy_policy is r.BusyPolicy.FAIL_FAST and record.busy_timeout == 1.5
    assert record.use_memory is False and record.use_knowledge is None
    assert record.tool_result_timeout is None and record.temperature is None
    assert convert.chat_options(agent_pb2.ChatOptions()) == r.ChatOptions()


def test_enum_numbers_this_server_does_not_know_mean_unspecified() -> None:
    # Proto enums are open: a newer client may send a number this server has no name for.
    assert convert.enum_value(r.IfExists, 99) is r.IfExists.UNSPECIFIED
    assert convert.definition(agent_pb2.AgentDefinition(name="X", memory_write=42)).memory_write == 0  # type: ignore[arg-type]
    assert convert.enum_value(r.BusyPolicy, 2) is r.BusyPolicy.FAIL_FAST


#: The modules that see sessionkit.v1 messages: the wire adapter and the conversion it uses.
ADAPTERS = {"grpc_servicer.py", "convert.py"}


def test_the_business_layer_imports_no_messages() -> None:
    agent = Path(__file__).resolve().parents[2] / "services" / "agent"
    offenders = []
    for path in sorted(agent.glob("*.py")):
        if path.name in ADAPTERS:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [
                f"{path.name}:{node.lineno} imports {n}"  # type: ignore[attr-defined]
                for n in names
                if n.startswith(("sessionkit.v1", "google.protobuf"))
            ]
    assert offenders == [], "the agent's business layer works on records.py; convert in convert.py"
