"""Request and response bodies of the gateway (they are what /openapi.json documents). Field names and
shapes are those of the SDK clients' results, so a REST answer reads like the Python SDK's."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from sessionkit_server.common.checks import MAX_DURATION_SECONDS
from sessionkit_server.common.list_limits import list_limit

JsonObject = dict[str, Any]
MemoryKind = Literal["short", "long"]
MemoryFilter = Literal["short", "long", "all"]
Scope = Literal["session", "user", "collection"]
#: Versions are int64 in the protos: a larger number is a 400, not an overflow.
INT64_MAX = (1 << 63) - 1


class Strict(BaseModel):
    """Request bodies refuse unknown fields: a misspelt option is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


# -- errors ------------------------------------------------------------------------------------------


class FieldViolation(BaseModel):
    field: str = Field(description="The request field at fault, e.g. 'body.context.session_id'.")
    description: str


class ErrorDetail(BaseModel):
    code: int = Field(description="The HTTP status (also the response's status).")
    status: str = Field(description="The gRPC status code name, e.g. NOT_FOUND.")
    reason: str = Field(
        description="Stable machine-readable reason, e.g. SESSION_NOT_FOUND (docs/ERRORS.md)."
    )
    message: str
    metadata: dict[str, str] = Field(default_factory=dict)
    violations: list[FieldViolation] = Field(default_factory=list)
    retry_after: float | None = Field(None, description="Seconds to wait before retrying (also Retry-After).")


class ErrorBody(BaseModel):
    """Every error the gateway answers has this one shape."""

    error: ErrorDetail


# -- /agent ------------------------------------------------------------------------------------------


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = Field("user", max_length=64)
    content: str = Field(max_length=1_000_000)


class AgentContext(BaseModel):
    model_config = ConfigDict(extra="allow")
    session_id: str | None = None
    user_id: str | None = None


class AgentRequest(BaseModel):
    """The documented body (``messages`` + ``context``) or the one PraisonAI clients send (``query``,
    ``session_id``, ``user_id`` at the top level). Unknown fields are ignored, as clients add their own."""

    model_config = ConfigDict(extra="allow")
    messages: list[ChatMessage] | None = Field(
        None,
        max_length=list_limit("AgentRequest.messages"),
        description="The conversation; the last user message is this turn's input.",
    )
    context: AgentContext | None = None
    query: str | None = Field(None, max_length=1_000_000, description="Legacy body: the message.")
    message: str | None = Field(None, max_length=1_000_000, description="Alias of query.")
    session_id: str | None = None
    user_id: str | None = None
    agent: str | None = Field(None, description="Agent name (default: the gateway's default agent).")
    agent_name: str | None = Field(None, description="Alias of agent.")
    stream: bool = Field(
        False, description="Answer Server-Sent Events (also with Accept: text/event-stream)."
    )
    options: JsonObject | None = Field(None, description="Per-turn chat options passed to the agent service.")


class AgentResponse(BaseModel):
    response: str
    session_id: str
    metadata: JsonObject = Field(default_factory=dict)


# -- health ------------------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    services: dict[str, str] = Field(description="Health of each upstream service (gRPC health status).")


# -- sessions and state ------------------------------------------------------------------------------


class CreateSession(Strict):
    session_id: str | None = Field(None, description="Omitted: the server makes one.")
    ttl_seconds: int | None = Field(None, ge=1, le=MAX_DURATION_SECONDS)
    state: JsonObject | None = Field(None, description="Initial state of a new session.")
    get_if_exists: bool = Field(True, description="false: 409 when the session exists.")


class SessionOut(BaseModel):
    app: str | None = Field(description="The app as the request named it (?app=); null: the default app.")
    user_id: str
    session_id: str
    create_time: datetime | None
    update_time: datetime | None
    expire_time: datetime | None
    ttl_seconds: int | None
    version: int
    event_count: int


class CreatedSession(SessionOut):
    created: bool


class SessionList(BaseModel):
    sessions: list[SessionOut]
    next_page_token: str = ""


class Deleted(BaseModel):
    deleted: bool


class StateOut(BaseModel):
    state: JsonObject
    version: int


class SaveState(Strict):
    state: JsonObject
    expected_version: int | None = Field(
        None, ge=0, le=INT64_MAX, description="Compare-and-set: 409 when stale."
    )
    delete_keys: list[str] = Field(
        default_factory=list,
        max_length=list_limit("sessionkit.v1.SaveStateRequest.delete_keys"),
        description="user: and app: keys to delete in the same write.",
    )


class Version(BaseModel):
    version: int


class ValueOut(BaseModel):
    key: str
    value: Any
    version: int


class SetValue(Strict):
    value: Any = Field(description="Any JSON value.")
    expected_version: int | None = Field(None, ge=0, le=INT64_MAX)


class PatchValue(Strict):
    """Exactly one of increment (a number added) and append (values added to a list)."""

    increment: float | None = None
    append: list[Any] | None = Field(None, max_length=list_limit("PatchValue.append"))
    expected_version: int | None = Field(None, ge=0, le=INT64_MAX)


class PatchedValue(BaseModel):
    version: int
    value: float | None = Field(None, description="The new number (increment).")
    length: int | None = Field(None, description="The new list length (append).")


class DeletedValue(BaseModel):
    version: int
    existed: bool


class StateVersionOut(BaseModel):
    version: int
    operation: str = Field(description="What made this version: SET, DELETE, SAVE, CLEAR, RESTORE, ...")
    key: str = Field(description="The key changed (one-key writes), else empty.")
    state: JsonObject = Field(description="The session's own keys as of this version.")
    time: datetime | None


class VersionList(BaseModel):
    versions: list[StateVersionOut] = Field(description="Newest first.")
    next_page_token: str = ""


class StateChangeOut(BaseModel):
    """One event of the state watch stream (SSE data)."""

    version: int
    operation: str = Field(description="SNAPSHOT first, then SET, DELETE, SAVE, CLEAR, ...")
    key: str
    value: Any = None
    state: JsonObject
    time: datetime | None


class EventIn(Strict):
    role: str = Field(min_length=1, max_length=64)
    content: str = Field("", max_length=1_000_000)
    author: str = Field("", max_length=256)
    metadata: JsonObject = Field(default_factory=dict)


class EventOut(BaseModel):
    id: int
    role: str
    content: str
    author: str
    metadata: JsonObject
    create_time: datetime | None


class EventList(BaseModel):
    events: list[EventOut]
    next_page_token: str = ""


# -- memories ------------------------------------------------------------------------------------------


class MemoryIn(Strict):
    text: str = Field(min_length=1, max_length=100_000)
    memory_type: MemoryKind = "long"
    quality_score: float | None = Field(None, ge=0, le=1)
    metadata: JsonObject | None = None


class NewMemoryIn(Strict):
    text: str = Field(min_length=1, max_length=100_000)
    memory_type: MemoryKind | None = Field(None, description="Default: the batch's memory_type.")
    quality_score: float | None = Field(None, ge=0, le=1)
    metadata: JsonObject | None = None


class MemoriesIn(Strict):
    memories: list[NewMemoryIn] = Field(
        min_length=1, max_length=list_limit("sessionkit.v1.AddMemoriesRequest.memories")
    )
    memory_type: MemoryKind = "long"
    skip_merge: bool = False


class MemoryOut(BaseModel):
    id: str
    text: str
    memory_type: str
    quality_score: float
    metadata: JsonObject
    session_id: str
    user_id: str
    created_at: str | None
    updated_at: str | None
    revision: int


class AddedMemory(MemoryOut):
    deduplicated: bool
    merged: bool


class MemoryScores(BaseModel):
    semantic: float
    lexical: float
    quality: float
    recency: float


class RetrieverRank(BaseModel):
    rank: int = Field(description="1-based position among the retriever's candidates, before filters.")
    score: float = Field(description="The retriever's own score (cosine similarity; lexical relevance).")


class ScoreWeights(BaseModel):
    relevance: float
    quality: float
    recency: float


class RankFusion(BaseModel):
    """relevance = (dense_weight / (k + dense rank) + lexical_weight / (k + lexical rank)) /
    ((dense_weight + lexical_weight) / (k + 1)); a ranking that missed the hit adds 0."""

    k: int
    dense_weight: float
    lexical_weight: float


class SearchExplanation(BaseModel):
    """Why a hit scored what it did (only with ``explain: true``): score = weights.relevance *
    relevance + weights.quality * quality + weights.recency * recency (a null term counts 0)."""

    dense: RetrieverRank | None = Field(description="null: the dense (embedding) ranking missed it.")
    lexical: RetrieverRank | None = Field(description="null: the lexical (full-text) ranking missed it.")
    relevance: float = Field(description="The two rankings fused, in [0, 1].")
    quality: float | None = Field(description="The memory's quality_score; null for knowledge.")
    recency: float | None = Field(description="1 just changed, halving every half-life; null for knowledge.")
    weights: ScoreWeights
    score: float
    fusion: RankFusion = Field(description="The fusion's constant and weights (relevance from the ranks).")


class Explained(BaseModel):
    """A search hit's explanation: in the JSON only when asked for, so a search without ``explain``
    answers exactly what it did before (no ``"explanation": null`` on every hit)."""

    explanation: SearchExplanation | None = Field(
        None, description="Only with explain: true.", exclude_if=lambda value: value is None
    )


class MemoryHit(MemoryOut, Explained):
    score: float
    scores: MemoryScores


class MemorySearch(Strict):
    query: str = Field(max_length=10_000)
    memory_type: MemoryFilter = "all"
    limit: int = Field(5, ge=1, le=100)
    min_quality: float | None = Field(None, ge=0, le=1)
    metadata_filter: JsonObject | None = None
    #: A JSON true or false, nothing that merely converts to one ("yes", 1): 400 otherwise.
    explain: StrictBool = Field(False, description="Add each hit's explanation (ranks, scores, terms).")


class MemoryHits(BaseModel):
    hits: list[MemoryHit]


class AddedMemories(BaseModel):
    results: list[AddedMemory]


class MemoryList(BaseModel):
    memories: list[MemoryOut]


class MemoryContextIn(Strict):
    query: str = Field(min_length=1, max_length=10_000)
    max_items: int = Field(3, ge=1, le=100)
    memory_type: MemoryFilter = "all"
    min_quality: float | None = Field(None, ge=0, le=1)
    metadata_filter: JsonObject | None = None
    max_chars: int = Field(0, ge=0, le=1_000_000, description="0: no limit.")


class MemoryContext(BaseModel):
    context: str = Field(
        description="One memory per line, for a prompt; empty when nothing relevant was found. Its exact "
        "layout is not a contract: read hits."
    )
    hits: list[MemoryHit] = Field(description="The memories used, best first.")


class MemoryChangeOut(BaseModel):
    operation: Literal["ADD", "UPDATE", "MERGE", "DELETE", "OPERATION_UNSPECIFIED"]
    old_text: str | None
    new_text: str | None
    old_quality_score: float | None
    new_quality_score: float | None
    actor: str
    revision: int
    time: str | None


class MemoryHistory(BaseModel):
    changes: list[MemoryChangeOut] = Field(description="Oldest first.")


class MemoryUpdate(Strict):
    text: str | None = Field(None, min_length=1, max_length=100_000)
    metadata: JsonObject | None = None
    quality_score: float | None = Field(None, ge=0, le=1)


class DeletedCount(BaseModel):
    deleted_count: int


# -- knowledge -----------------------------------------------------------------------------------------


class Chunker(Strict):
    type: Literal["token", "sentence", "recursive", "semantic"] = "recursive"
    chunk_size: int | None = Field(None, ge=1, le=100_000)
    chunk_overlap: int | None = Field(None, ge=0, le=100_000)
    semantic_threshold: float | None = Field(None, ge=0, le=1)


class KnowledgeIn(Strict):
    """Exactly one of text and url."""

    text: str | None = Field(None, min_length=1)
    url: str | None = Field(None, pattern=r"^https?://", max_length=4096)
    name: str = Field("", max_length=512)
    scope: Scope = "session"
    collection: str = Field("", max_length=128)
    content_type: str = Field("", max_length=128)
    chunker: Chunker | None = None
    metadata: JsonObject | None = None
    force: bool = False


class ChunkerOut(BaseModel):
    type: str
    chunk_size: int
    chunk_overlap: int
    semantic_threshold: float | None = None


class SourceOut(BaseModel):
    id: str
    name: str
    kind: str
    scope: str
    collection: str | None
    uri: str | None
    content_type: str
    title: str | None
    content_hash: str
    size_bytes: int
    chunk_count: int
    chunker: ChunkerOut
    metadata: JsonObject
    created_at: str | None
    updated_at: str | None


class Ingestion(BaseModel):
    kind: str
    outcome: Literal["created", "updated", "unchanged", "unknown"]
    source: SourceOut
    chunks_added: int
    chunks_removed: int
    seconds: float


_SCOPES = list_limit("sessionkit.v1.SearchKnowledgeRequest.scopes")


class KnowledgeSearch(Strict):
    query: str = Field(max_length=10_000)
    limit: int = Field(5, ge=1, le=100)
    # collections become scopes too: the service refuses more than its limit of both together.
    scopes: list[Literal["session", "user"]] | None = Field(None, max_length=_SCOPES)
    collections: list[str] | None = Field(None, max_length=_SCOPES)
    source_names: list[str] | None = Field(
        None, max_length=list_limit("sessionkit.v1.SearchKnowledgeRequest.source_names")
    )
    metadata_filter: JsonObject | None = None
    #: A JSON true or false, nothing that merely converts to one ("yes", 1): 400 otherwise.
    explain: StrictBool = Field(False, description="Add each hit's explanation (ranks, scores, terms).")


class HitSource(BaseModel):
    id: str
    name: str
    kind: str


class HitPosition(BaseModel):
    chunk_index: int
    page: int | None
    start_char: int
    end_char: int


class KnowledgeScores(BaseModel):
    semantic: float
    lexical: float


class KnowledgeHit(Explained):
    chunk_id: str
    text: str
    score: float
    scores: KnowledgeScores
    source: HitSource
    scope: str
    position: HitPosition
    heading_path: list[str]
    metadata: JsonObject


class KnowledgeHits(BaseModel):
    hits: list[KnowledgeHit]


class SourceList(BaseModel):
    sources: list[SourceOut]


class DeletedSource(BaseModel):
    deleted: bool
    deleted_chunk_count: int


class ClearedKnowledge(BaseModel):
    deleted_source_count: int
