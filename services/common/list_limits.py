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
    fields that are set are visited, so a small request costs a few attribute reads."""
    for field, value in message.ListFields():
        described = field.message_type
        if described is not None and described.full_name.startswith("google.protobuf."):
            continue
        path = f"{prefix}{field.name}"
        if field.is_repeated:
            limit = LIST_LIMITS.get(field.full_name)
            if limit is not None and len(value) > limit:
                description = f"has {len(value)} items; at most {limit}"
                raise InvalidArgument(
                    f"invalid {path}: {description}", violations=[FieldViolation(path, description)]
                )
            if described is not None and not described.GetOptions().map_entry:
                for i, item in enumerate(value):
                    check_lists(item, f"{path}[{i}].")
        elif described is not None:
            check_lists(value, f"{path}.")
