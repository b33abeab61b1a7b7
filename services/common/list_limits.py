"""How many items each list a request may carry can hold: one table for every repeated field of every
request message (tests/project/test_list_limits.py fails when a proto gains one without a limit),
checked once for every RPC by the server interceptor, so the gRPC API and the gateway (whose REST
bodies become these messages; its models take their max_length from here too) refuse the same lists
with the same INVALID_ARGUMENT naming the field and its limit, before any work is done.

The limits bound the work of one request (a knowledge search naming 20,000 collections took 14.5 s and
stalled every other request): each is far above what a real call needs. Lists inside JSON values
(google.protobuf.Struct / ListValue: state, metadata) are bounded by their size limits instead.
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from sessionkit.errors import FieldViolation, InvalidArgument

#: Full proto field name -> the most items a request may give it.
LIST_LIMITS: dict[str, int] = {
    # state
    "sessionkit.v1.GetStateRequest.keys": 1000,
    "sessionkit.v1.SaveStateRequest.delete_keys": 1000,
    # memory
    "sessionkit.v1.AddMemoriesRequest.memories": 1000,
    "sessionkit.v1.ExtractMemoriesRequest.messages": 1000,
    # knowledge: each scope is one more filter of every search, so few
    "sessionkit.v1.ListKnowledgeSourcesRequest.scopes": 100,
    "sessionkit.v1.SearchKnowledgeRequest.scopes": 100,
    "sessionkit.v1.SearchKnowledgeRequest.source_ids": 100,
    "sessionkit.v1.SearchKnowledgeRequest.source_names": 100,
    # agent
    "sessionkit.v1.AgentDefinition.tools": 128,
    "sessionkit.v1.AgentDefinition.knowledge_sources": 100,
    "sessionkit.v1.AgentDefinition.knowledge_collections": 100,
    "sessionkit.v1.ChatStreamStart.tools": 128,
    "sessionkit.v1.RunWorkflowRequest.tasks": 100,
    "sessionkit.v1.WorkflowTask.context_tasks": 100,
}

#: Lists of REST bodies that no proto field carries as such (the gateway's models use these).
REST_LIST_LIMITS: dict[str, int] = {
    # POST /agent: the conversation a client sends; the turn's input is its last user message.
    "AgentRequest.messages": 1000,
    # PATCH /v1/sessions/{id}/state/{key}: values appended in one write (a ListValue).
    "PatchValue.append": 1000,
}


def list_limit(field: str) -> int:
    """The limit of ``field`` ("sessionkit.v1.Message.field", or "Model.field" of a REST body)."""
    return LIST_LIMITS[field] if field in LIST_LIMITS else REST_LIST_LIMITS[field]


def check_lists(message: Message, prefix: str = "") -> None:
    """Refuse ``message`` if any list in it (at any depth) holds more items than its limit. Only the
    fields that may hold a limited list are visited (a plan per message type, built once): most
    requests (a SessionRef and scalars) cost one dict lookup, on every RPC."""
    limited, nested = _plan(message.DESCRIPTOR)  # type: ignore[arg-type]  # upb's Descriptor type
    for name, limit in limited:
        value = getattr(message, name)
        if len(value) > limit:
            path = f"{prefix}{name}"
            description = f"has {len(value)} items; at most {limit}"
            raise InvalidArgument(
                f"invalid {path}: {description}", violations=[FieldViolation(path, description)]
            )
    for name, repeated in nested:
        if repeated:
            for i, item in enumerate(getattr(message, name)):
                check_lists(item, f"{prefix}{name}[{i}].")
        elif message.HasField(name):
            check_lists(getattr(message, name), f"{prefix}{name}.")


#: Message type -> (its limited lists: (field, limit); its message fields that may hold one:
#: (field, repeated)).
_Plan = tuple[tuple[tuple[str, int], ...], tuple[tuple[str, bool], ...]]
_PLANS: dict[Descriptor, _Plan] = {}


def _plan(descriptor: Descriptor) -> _Plan:
    plan = _PLANS.get(descriptor)
    if plan is None:
        plan = _PLANS[descriptor] = _build_plan(descriptor, set())
    return plan


def _build_plan(descriptor: Descriptor, visiting: set[str]) -> _Plan:
    visiting = visiting | {descriptor.full_name}
    limited: list[tuple[str, int]] = []
    nested: list[tuple[str, bool]] = []
    for field in descriptor.fields:
        described = field.message_type
        if described is not None and described.full_name.startswith("google.protobuf."):
            continue  # Struct, ListValue, Timestamp...: bounded by size limits, not list limits
        limit = LIST_LIMITS.get(field.full_name)
        if field.is_repeated and limit is not None:
            limited.append((field.name, limit))
        if described is None or described.GetOptions().map_entry:
            continue
        # A type met again on the way down (a recursive message) is visited: it may hold a list.
        if described.full_name in visiting or any(_build_plan(described, visiting)):
            nested.append((field.name, field.is_repeated))
    return tuple(limited), tuple(nested)
