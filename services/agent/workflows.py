"""Workflows: tasks run one after the other (process SEQUENTIAL), each a turn of its agent, each given
the outputs of the tasks it depends on as context. The workflow holds the session's conversation for its
whole run; each task's turn is persisted as it completes, and a failing task ends the workflow with its
error (metadata "task_index")."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable

from sessionkit.errors import FieldViolation, InvalidArgument, NotFound, SessionKitError
from sessionkit_server.agent.conversations import ConversationLeases
from sessionkit_server.agent.convert import workflow_result_bytes, workflow_result_from_bytes
from sessionkit_server.agent.definitions import AgentDefinitions, check_agent_name
from sessionkit_server.agent.idempotent import run_once
from sessionkit_server.agent.records import (
    SEQUENTIAL,
    AgentDefinition,
    TaskResult,
    TaskStarted,
    TaskTextDelta,
    WorkflowEvent,
    WorkflowRequest,
    WorkflowResult,
)
from sessionkit_server.agent.settings import AgentSettings
from sessionkit_server.agent.turn_io import TurnIO
from sessionkit_server.agent.turns import Turns

MAX_TASKS = 50

Send = Callable[[WorkflowEvent], Awaitable[None]]


class _TaskIO(TurnIO):
    """Reports one task's turn as workflow events."""

    def __init__(self, send: Send, index: int, name: str, agent: str, stream: bool) -> None:
        self.send, self.index, self.name, self.agent, self.stream = send, index, name, agent, stream

    async def started(self, turn_id: str, waited: float) -> None:
        await self.send(TaskStarted(self.index, self.name, self.agent, turn_id))

    async def delta(self, text: str, round_: int) -> None:
        if self.stream:
            await self.send(TaskTextDelta(self.index, text))


def check_workflow(request: WorkflowRequest) -> list[str]:
    """The tasks' names (defaults filled in), or INVALID_ARGUMENT naming what is wrong."""
    tasks = request.tasks
    if not 1 <= len(tasks) <= MAX_TASKS:
        raise InvalidArgument(
            f"a workflow has 1 to {MAX_TASKS} tasks, not {len(tasks)}",
            violations=[FieldViolation("tasks", f"1 to {MAX_TASKS} tasks")],
        )
    if request.process not in (0, SEQUENTIAL):
        raise InvalidArgument(
            "unsupported process", violations=[FieldViolation("process", "only SEQUENTIAL is supported")]
        )
    names: list[str] = []
    for n, task in enumerate(tasks):
        name = task.name or f"task-{n + 1}"
        if name in names:
            raise InvalidArgument(
                f"duplicate task name {name!r}",
                violations=[FieldViolation(f"tasks[{n}].name", "must be unique")],
            )
        if not task.description.strip():
            raise InvalidArgument(
                f"task {name!r} has no description",
                violations=[FieldViolation(f"tasks[{n}].description", "must not be empty")],
            )
        check_agent_name(task.agent_name, f"tasks[{n}].agent_name")
        for c in task.context_tasks:
            if c not in names:
                raise InvalidArgument(
                    f"task {name!r} takes context from {c!r}, which is not an earlier task",
                    violations=[FieldViolation(f"tasks[{n}].context_tasks", "must name earlier tasks")],
                )
        names.append(name)
    return names


class Workflows:
    def __init__(
        self,
        definitions: AgentDefinitions,
        leases: ConversationLeases,
        turns: Turns,
        settings: AgentSettings,
    ) -> None:
        self.definitions = definitions
        self.leases = leases
        self.turns = turns
        self.settings = settings

    async def run(self, request: WorkflowRequest, send: Send, deadline: float | None = None) -> None:
        """Run the tasks in order, sending per-task events and the final result through ``send``."""
        tasks = request.tasks
        names = check_workflow(request)
        session = await self.definitions.open_session(request.session)
        agents: dict[str, AgentDefinition] = {}
        for n, task in enumerate(tasks):
            if task.agent_name not in agents:
                try:
                    agents[task.agent_name] = await self.definitions.find(session, task.agent_name)
                except NotFound as error:  # checked before any task runs
                    error.metadata["task_index"] = str(n)
                    raise

        async def run(waited: float) -> bytes:
            begin = time.perf_counter() - waited  # the wait for the conversation counts
            workflow_id = uuid.uuid4().hex
            outputs: dict[str, str] = {}
            result = WorkflowResult(workflow_id=workflow_id)
            for n, task in enumerate(tasks):
                agent = agents[task.agent_name]
                io = _TaskIO(send, n, names[n], task.agent_name, request.stream)
                context_names = list(task.context_tasks) or ([names[n - 1]] if n else [])
                context = [f"Output of task {c!r}:\n{outputs[c]}" for c in context_names]
                if request.input:
                    context.insert(0, f"The request: {request.input}")
                prompt = task.description
                if task.expected_output:
                    prompt += f"\n\nExpected output: {task.expected_output}"
                try:
                    turn = await self.turns.run(
                        session.ref,
                        agent,
                        prompt,
                        request.options,
                        request.stream,
                        [],
                        io,
                        waited if n == 0 else 0.0,
                        extra_context="\n\n".join(context),
                        turn_metadata={"workflow_id": workflow_id, "task": names[n], "task_index": n},
                    )
                except SessionKitError as error:
                    error.metadata["task_index"] = str(n)
                    raise
                outputs[names[n]] = turn.text
                task_result = TaskResult(n, names[n], agent.name, turn.text, turn.metadata)
                result.task_results.append(task_result)
                result.usage.add(turn.metadata.usage.prompt_tokens, turn.metadata.usage.completion_tokens)
                await send(task_result)
            result.final_output = result.task_results[-1].output
            result.duration_seconds = time.perf_counter() - begin
            return workflow_result_bytes(result)

        data, replayed = await run_once(
            self.definitions.store,
            self.leases,
            session.conversation,
            request.idempotency_key,
            "RunWorkflow",
            request.options,
            deadline,
            run,
            self.settings.busy_poll_seconds,
        )
        final = workflow_result_from_bytes(data)
        if replayed:
            for task_result in final.task_results:
                task_result.metadata.replayed = True
                await send(task_result)
        await send(final)
