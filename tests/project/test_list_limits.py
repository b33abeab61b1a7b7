"""Every list a request may carry has a declared limit (issue 14, item 6): each repeated field reachable
from any RPC's request message (read from the proto descriptors, so a new one fails here until it gets
a limit), and each list of a gateway request body."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.protobuf.descriptor import Descriptor
from pydantic import BaseModel

from sessionkit.errors import InvalidArgument
from sessionkit.v1 import agent_pb2, knowledge_pb2, memory_pb2, state_pb2
from sessionkit_server.common.list_limits import LIST_LIMITS, REST_LIST_LIMITS, check_lists
from sessionkit_server.gateway import models


def _repeated(message: Descriptor, seen: set[str]) -> Iterator[str]:
    for field in message.fields:
        described = field.message_type
        if described is not None and described.full_name.startswith("google.protobuf."):
            continue  # JSON values: bounded by their size limits
        if field.is_repeated:
            yield field.full_name
        if described is not None and not described.GetOptions().map_entry and described.full_name not in seen:
            seen.add(described.full_name)
            yield from _repeated(described, seen)


def request_lists() -> set[str]:
    seen: set[str] = set()
    found: set[str] = set()
    for module in (state_pb2, memory_pb2, knowledge_pb2, agent_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found.update(_repeated(method.input_type, seen))
    return found


def test_every_repeated_field_of_a_request_has_a_limit() -> None:
    lists = request_lists()
    assert "sessionkit.v1.SearchKnowledgeRequest.scopes" in lists  # the walk reaches nested messages
    assert "sessionkit.v1.WorkflowTask.context_tasks" in lists
    assert sorted(lists - LIST_LIMITS.keys()) == [], "declare a limit in services/common/list_limits.py"
    assert sorted(LIST_LIMITS.keys() - lists) == [], "a limit names no request field"
    assert all(0 < limit <= 10_000 for limit in LIST_LIMITS.values())


def _list_fields(model: type[BaseModel]) -> Iterator[tuple[str, int | None]]:
    for name, field in model.model_fields.items():
        if "list[" in str(field.annotation):
            lengths = [m.max_length for m in field.metadata if hasattr(m, "max_length")]
            yield f"{model.__name__}.{name}", lengths[0] if lengths else None


def test_every_list_of_a_rest_request_body_has_its_declared_limit() -> None:
    bodies = [
        m
        for m in vars(models).values()
        if isinstance(m, type)
        and issubclass(m, BaseModel)
        and (issubclass(m, models.Strict) or m is models.AgentRequest)
    ]
    found = dict(field for body in bodies for field in _list_fields(body))
    assert "KnowledgeSearch.collections" in found and "AgentRequest.messages" in found
    unbounded = sorted(name for name, limit in found.items() if limit is None)
    assert unbounded == []
    assert found["AgentRequest.messages"] == REST_LIST_LIMITS["AgentRequest.messages"]
    assert found["MemoriesIn.memories"] == LIST_LIMITS["sessionkit.v1.AddMemoriesRequest.memories"]
    assert found["KnowledgeSearch.collections"] == LIST_LIMITS["sessionkit.v1.SearchKnowledgeRequest.scopes"]


def test_the_check_names_the_field_and_its_limit_and_passes_lists_at_the_limit() -> None:
    memories = [memory_pb2.NewMemory(text=f"fact {n}") for n in range(1000)]
    check_lists(memory_pb2.AddMemoriesRequest(memories=memories))
    memories.append(memory_pb2.NewMemory(text="one more"))
    with pytest.raises(InvalidArgument) as info:
        check_lists(memory_pb2.AddMemoriesRequest(memories=memories))
    assert info.value.message == "invalid memories: has 1001 items; at most 1000"
    assert [(v.field, v.description) for v in info.value.violations] == [
        ("memories", "has 1001 items; at most 1000")
    ]
    messages = [memory_pb2.ConversationMessage(content="hi")] * 1001
    with pytest.raises(InvalidArgument):
        check_lists(memory_pb2.ExtractMemoriesRequest(messages=messages))


def test_lists_inside_nested_and_repeated_messages_are_checked_with_their_path() -> None:
    task = agent_pb2.WorkflowTask(context_tasks=[f"t{n}" for n in range(101)])
    request = agent_pb2.RunWorkflowRequest(tasks=[agent_pb2.WorkflowTask(), task])
    with pytest.raises(InvalidArgument) as info:
        check_lists(request)
    assert [v.field for v in info.value.violations] == ["tasks[1].context_tasks"]
    check_lists(agent_pb2.RunWorkflowRequest(tasks=[agent_pb2.WorkflowTask(context_tasks=["t"] * 100)]))
    keys = state_pb2.GetStateRequest(keys=["k"] * 1001)
    with pytest.raises(InvalidArgument, match="invalid keys: has 1001 items; at most 1000"):
        check_lists(keys)
    # A request with no list anywhere (a SessionRef and scalars) passes, and so does an unset message.
    check_lists(state_pb2.SetStateValueRequest(key="k"))
    check_lists(agent_pb2.RunWorkflowRequest())
