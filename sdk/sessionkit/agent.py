"""Session-bound agents and multi-agent workflows (the seed's ``session.Agent(...)``, ``Task`` and
``PraisonAIAgents``), async first; the synchronous classes wrap these on the SDK's background loop.

An agent's definition is stored with its session by the agent service, so a new Session object with
the same ids finds it (``session.agents()``) and its chat history (the session's event log) again.
``session.Agent(name=...)`` with the name of a stored agent replaces that definition: re-running a
program keeps the conversation and applies its current settings."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sessionkit.clients import AgentAPI
from sessionkit.errors import FieldViolation, InvalidArgument
from sessionkit.tool_schema import function_schema

if TYPE_CHECKING:
    from sessionkit.async_session import AsyncSession

#: Session.Agent() keywords passed through to the definition as they are.
DEFINITION_KEYS = {
    "goal",
    "backstory",
    "temperature",
    "max_tokens",
    "memory_max_items",
    "knowledge_max_items",
    "knowledge_collections",
    "history_max_events",
    "max_tool_rounds",
    "memory_write",
    "options",
}


class AsyncAgent:
    """An agent of an AsyncSession. ``await agent.chat("...")`` answers; ``agent.stream("...")`` yields
    the answer's text pieces as they are generated."""

    session: AsyncSession
    name: str
    role: str
    instructions: str | None
    #: The Python functions of its CLIENT tools, by name (run here when the model calls them).
    functions: dict[str, Callable[..., Any]]
    #: The stored definition, once created (as the service returned it).
    definition: dict[str, Any] | None
    #: The metadata of the last turn (model, usage, memories and chunks used, latency per step).
    last_metadata: dict[str, Any]

    def __init__(
        self,
        session: AsyncSession,
        client: AgentAPI,
        name: str,
        role: str = "Assistant",
        instructions: str | None = None,
        tools: Sequence[Any] | None = None,
        memory: bool = True,
        knowledge: Sequence[str] | bool | None = None,
        llm: str | None = None,
        model: str | None = None,
        *,
        stored: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise InvalidArgument(
                "an agent needs a name", violations=[FieldViolation("name", "a non-empty str")]
            )
        unknown = set(kwargs) - DEFINITION_KEYS
        if unknown:
            raise InvalidArgument(
                f"unknown agent setting(s) {sorted(unknown)}",
                violations=[
                    FieldViolation(k, f"not one of {sorted(DEFINITION_KEYS)}") for k in sorted(unknown)
                ],
            )
        self.session = session
        self._client = client
        self.name = name
        self.role = role
        self.instructions = instructions
        self.functions = {}
        declared: list[Any] = []
        for tool in tools or []:
            if callable(tool):
                schema = function_schema(tool)
                self.functions[schema["name"]] = tool
                declared.append(tool)
            else:
                declared.append(tool)
        self._knowledge = knowledge
        definition: dict[str, Any] = {
            "name": name,
            "role": role or "Assistant",
            "instructions": instructions or "",
            "tools": declared,
            "memory": bool(memory) and session.memory_enabled,
            **kwargs,
        }
        if llm or model:
            definition["model"] = llm or model
        if session.memory_provider == "mem0" and "memory_write" not in kwargs:
            definition["memory_write"] = "extract"
        if isinstance(knowledge, bool):
            definition["knowledge"] = knowledge
        self._definition = definition
        self.definition = stored
        self.last_metadata = {}

    @classmethod
    def _from_stored(cls, session: AsyncSession, client: AgentAPI, stored: dict[str, Any]) -> AsyncAgent:
        """An agent found in the session (its CLIENT tools have no functions until given again)."""
        agent = cls(session, client, stored["name"], stored.get("role") or "Assistant", stored=stored)
        agent.instructions = stored.get("instructions") or None
        return agent

    async def _knowledge_names(self) -> list[str]:
        names: list[str] = []
        if isinstance(self._knowledge, (bool, type(None))):
            return names
        if isinstance(self._knowledge, str):
            raise InvalidArgument(
                "knowledge must be a list of sources", violations=[FieldViolation("knowledge", "a list")]
            )
        for source in self._knowledge:
            if isinstance(source, (str, os.PathLike)) and await asyncio.to_thread(Path(source).is_file):
                # A file the agent should know: added to the session (unchanged when already there).
                added = await self.session.add_knowledge(source)
                names.append(added["source"]["name"])
            elif isinstance(source, str) and source.startswith(("http://", "https://")):
                added = await self.session.add_knowledge(source)
                names.append(added["source"]["name"])
            elif isinstance(source, str):
                names.append(source)
            else:
                raise InvalidArgument(
                    f"invalid knowledge source {source!r}",
                    violations=[FieldViolation("knowledge", "file paths, URLs or source names")],
                )
        return names

    async def ensure(self) -> dict[str, Any]:
        """Store the definition in the session (once per object); returns it as stored."""
        if self.definition is None:
            await self.session._ensure_session()
            definition = dict(self._definition)
            names = await self._knowledge_names()
            if names:
                definition["knowledge_sources"] = names
            self.definition = await self._client.create_agent(self.session._ref, definition, "replace")
        return self.definition

    async def chat(self, message: str, *, stream: bool = False, **options: Any) -> Any:
        """The agent's answer to ``message`` (a str). ``stream=True``: an async iterator of text pieces
        instead. ``options``: per-turn overrides (model, temperature, max_tokens, use_memory,
        use_knowledge, busy="wait"|"fail", busy_timeout, tool_timeout, metadata)."""
        if stream:
            return self.stream(message, **options)
        result = await self.chat_result(message, **options)
        return result["text"]

    async def chat_result(self, message: str, **options: Any) -> dict[str, Any]:
        """The answer with its metadata: ``{"text": ..., "metadata": {...}}``."""
        await self.ensure()
        if not self.functions:
            result = await self._client.chat(self.session._ref, self.name, message, options=options)
        else:
            result = {}
            async for event in self.events(message, stream=False, **options):
                if event["type"] == "result":
                    result = event
        self.last_metadata = result["metadata"]
        return {"text": result["text"], "metadata": result["metadata"]}

    async def stream(self, message: str, **options: Any) -> AsyncIterator[str]:
        """The answer's text pieces as the model generates them."""
        async for event in self.events(message, stream=True, **options):
            if event["type"] == "delta":
                yield event["text"]
            elif event["type"] == "result":
                self.last_metadata = event["metadata"]

    async def events(
        self, message: str, *, stream: bool = True, **options: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Every event of a turn: started, delta, tool_call, tool_call_completed, result."""
        await self.ensure()
        async for event in self._client.chat_stream(
            self.session._ref, self.name, message, stream=stream, tools=self.functions, options=options
        ):
            yield event

    async def history(self, limit: int = 100) -> list[dict[str, Any]]:
        """This agent's conversation in the session, oldest first: [{"role", "content"}]."""
        events = await self.session.get_events(limit * 4)
        turns = [
            {"role": e.role, "content": e.content}
            for e in events
            if e.role in ("user", "assistant") and e.metadata.get("agent") == self.name
        ]
        return turns[-limit:]

    async def delete(self) -> bool:
        """Forget the definition (the session's events stay)."""
        return await self._client.delete_agent(self.session._ref, self.name)

    def __repr__(self) -> str:
        return f"AsyncAgent(name={self.name!r}, role={self.role!r}, session={self.session.session_id!r})"


class Task:
    """One task of a workflow: what to do, which agent does it, and what the output should be."""

    def __init__(
        self,
        description: str,
        agent: Any,
        expected_output: str | None = None,
        *,
        name: str | None = None,
        context: Sequence[Task] | None = None,
    ) -> None:
        if not isinstance(description, str) or not description.strip():
            raise InvalidArgument(
                "a task needs a description", violations=[FieldViolation("description", "a non-empty str")]
            )
        self.description = description
        self.agent = agent
        self.expected_output = expected_output
        self.name = name
        self.context = list(context or [])
        #: The task's output once its workflow ran.
        self.output: str | None = None

    def __repr__(self) -> str:
        return f"Task({self.description[:40]!r}, agent={getattr(self.agent, 'name', self.agent)!r})"


def _async_agent(agent: Any) -> AsyncAgent:
    inner = getattr(agent, "_async", agent)
    if not isinstance(inner, AsyncAgent):
        raise InvalidArgument(
            f"not an agent of a session: {agent!r}",
            violations=[FieldViolation("agent", "use session.Agent(...)")],
        )
    return inner


class AsyncWorkflow:
    """Agents working through tasks in one session, one task after the other (process="sequential");
    each task gets the previous task's output (or the outputs of its ``context`` tasks) as context.
    ``memory``: the session's memory (``session.memory``) to use, or False/None for none."""

    tasks: list[Task]
    agents: list[AsyncAgent]
    session: AsyncSession
    use_memory: bool
    input: str
    stream: bool
    #: The whole result once run: final_output, task_results (output and metadata per task), usage.
    result: dict[str, Any] | None

    def __init__(
        self,
        agents: Sequence[Any] | None = None,
        tasks: Sequence[Task] | None = None,
        memory: Any = True,
        process: str = "sequential",
        *,
        input: str = "",
        stream: bool = False,
    ) -> None:
        if process != "sequential":
            raise InvalidArgument(
                f"unsupported process {process!r}",
                violations=[FieldViolation("process", "only 'sequential'")],
            )
        if not tasks:
            raise InvalidArgument(
                "a workflow needs tasks", violations=[FieldViolation("tasks", "at least one")]
            )
        self.tasks = list(tasks)
        self.agents = [_async_agent(a) for a in agents or []] or [_async_agent(t.agent) for t in self.tasks]
        refs = {
            (r.app_name, r.user_id, r.session_id)
            for r in [a.session._ref for a in self.agents]
            + [_async_agent(t.agent).session._ref for t in self.tasks]
        }
        if len(refs) > 1:
            raise InvalidArgument(
                "a workflow's agents must belong to one session",
                violations=[FieldViolation("agents", f"{len(refs)} sessions")],
            )
        self.session = _async_agent(self.tasks[0].agent).session
        self.use_memory = bool(memory)
        self.input = input
        self.stream = stream
        self.result = None

    async def start(self) -> str:
        """Run the tasks; returns the last task's output (also in ``self.result``, each task's in
        ``task.output``)."""
        final: dict[str, Any] = {}
        async for event in self.events():
            if event["type"] == "result":
                final = event
        return str(final["final_output"])

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """The run as events: task_started, delta (with ``stream=True``), task_result, result."""
        for task in self.tasks:
            await _async_agent(task.agent).ensure()
        names = [t.name or f"task-{n + 1}" for n, t in enumerate(self.tasks)]
        specs = []
        for n, task in enumerate(self.tasks):
            spec: dict[str, Any] = {
                "name": names[n],
                "description": task.description,
                "agent_name": _async_agent(task.agent).name,
                "expected_output": task.expected_output or "",
            }
            if task.context:
                spec["context_tasks"] = [names[self.tasks.index(c)] for c in task.context]
            specs.append(spec)
        options = {} if self.use_memory else {"use_memory": False}
        client = _async_agent(self.tasks[0].agent)._client
        async for event in client.run_workflow(
            self.session._ref, specs, input=self.input, stream=self.stream, options=options
        ):
            if event["type"] == "task_result":
                self.tasks[event["task_index"]].output = event["output"]
            if event["type"] == "result":
                self.result = {k: v for k, v in event.items() if k != "type"}
            yield event

    # praisonaiagents' name for start().
    async def astart(self) -> str:
        return await self.start()
