"""The agent service's own records: what its business layer works on.

sessionkit_server.agent.convert turns them into sessionkit.v1 messages and back (for the wire in the
gRPC servicer, and for the stored forms: a definition and a replayed response are kept serialized as
their messages, so a field added to the proto needs no migration). The enums keep the proto's numbers,
so converting one is a cast."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from sessionkit.jsonvalues import JsonValue
from sessionkit.state_client import SessionRef
from sessionkit_server.agent.tools import ToolSpec

JsonObject = dict[str, JsonValue]


class MemoryWrite(IntEnum):
    """What an agent writes to memory after each turn (AgentDefinition.MemoryWrite)."""

    UNSPECIFIED = 0  # the server's default: SHORT_TERM
    NONE = 1
    SHORT_TERM = 2
    EXTRACT = 3


class IfExists(IntEnum):
    """What CreateAgent does when the session has an agent of that name."""

    UNSPECIFIED = 0  # same as FAIL
    FAIL = 1
    REPLACE = 2
    GET = 3


class BusyPolicy(IntEnum):
    """What a turn does when another turn of the session is running."""

    UNSPECIFIED = 0  # same as WAIT
    WAIT = 1
    FAIL_FAST = 2


@dataclass
class AgentDefinition:
    """A stored agent. ``None`` in an optional field means "unset": the default applies."""

    name: str
    role: str = ""
    goal: str = ""
    backstory: str = ""
    instructions: str = ""
    model: str = ""
    temperature: float | None = None
    max_tokens: int = 0
    tools: list[ToolSpec] = field(default_factory=list)
    memory: bool | None = None
    memory_write: MemoryWrite = MemoryWrite.UNSPECIFIED
    memory_max_items: int = 0
    knowledge: bool | None = None
    knowledge_sources: list[str] = field(default_factory=list)
    knowledge_collections: list[str] = field(default_factory=list)
    knowledge_max_items: int = 0
    history_max_events: int = 0
    max_tool_rounds: int = 0
    options: JsonObject = field(default_factory=dict)
    #: Set by the server: the session the agent belongs to and its times (microseconds).
    session: SessionRef | None = None
    create_us: int = 0
    update_us: int = 0


@dataclass
class ChatOptions:
    """Per-turn overrides of Chat, ChatStream and RunWorkflow (durations in seconds)."""

    busy_policy: BusyPolicy = BusyPolicy.UNSPECIFIED
    busy_timeout: float | None = None
    use_memory: bool | None = None
    use_knowledge: bool | None = None
    model: str = ""
    temperature: float | None = None
    max_tokens: int = 0
    metadata: JsonObject = field(default_factory=dict)
    tool_result_timeout: float | None = None


@dataclass
class ClientToolCall:
    """A CLIENT tool the model asked for, sent to the caller to run."""

    call_id: str
    tool_name: str
    arguments_json: str
    round: int


@dataclass
class ToolCallRecord:
    """A tool call made during a turn, with its outcome (error set and result empty when it failed)."""

    call_id: str
    tool_name: str
    arguments_json: str
    round: int
    execution: int = 0  # tools.CLIENT or tools.SERVER; 0 when the tool is unknown
    result_json: str = ""
    error: str = ""
    latency_ms: float = 0.0


@dataclass
class TokenUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def add(self, prompt: int, completion: int) -> None:
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.total_tokens = self.prompt_tokens + self.completion_tokens


@dataclass
class TurnLatency:
    """Where a turn's time went, in milliseconds."""

    history_ms: float = 0.0
    memory_ms: float = 0.0
    knowledge_ms: float = 0.0
    llm_ms: float = 0.0
    tools_ms: float = 0.0
    persistence_ms: float = 0.0
    total_ms: float = 0.0


@dataclass
class TurnMetadata:
    turn_id: str
    agent_name: str
    model: str = ""
    usage: TokenUsage = field(default_factory=TokenUsage)
    memory_ids: list[str] = field(default_factory=list)
    knowledge_chunk_ids: list[str] = field(default_factory=list)
    latency: TurnLatency = field(default_factory=TurnLatency)
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    tool_rounds: int = 0
    finish_reason: str = ""
    event_ids: list[int] = field(default_factory=list)
    stored_memory_ids: list[str] = field(default_factory=list)
    replayed: bool = False
    start_us: int = 0


@dataclass
class TurnResult:
    text: str
    metadata: TurnMetadata


@dataclass
class WorkflowTask:
    description: str
    agent_name: str
    name: str = ""  # empty: "task-<1-based index>"
    expected_output: str = ""
    context_tasks: list[str] = field(default_factory=list)


@dataclass
class WorkflowRequest:
    session: SessionRef
    tasks: list[WorkflowTask]
    #: RunWorkflowRequest.Process: 0 (unspecified) and SEQUENTIAL are the only ones run.
    process: int = 0
    options: ChatOptions = field(default_factory=ChatOptions)
    input: str = ""
    stream: bool = False
    idempotency_key: str = ""


SEQUENTIAL = 1


@dataclass
class TaskStarted:
    task_index: int
    task_name: str
    agent_name: str
    turn_id: str


@dataclass
class TaskTextDelta:
    task_index: int
    text: str


@dataclass
class TaskResult:
    task_index: int
    task_name: str
    agent_name: str
    output: str
    metadata: TurnMetadata


@dataclass
class WorkflowResult:
    workflow_id: str
    final_output: str = ""
    task_results: list[TaskResult] = field(default_factory=list)
    usage: TokenUsage = field(default_factory=TokenUsage)
    duration_seconds: float = 0.0


#: What a workflow reports while it runs, in order: per task started, deltas, result; then the result.
WorkflowEvent = TaskStarted | TaskTextDelta | TaskResult | WorkflowResult
