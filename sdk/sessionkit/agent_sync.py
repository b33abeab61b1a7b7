"""The synchronous face of agents and workflows: each call runs the async implementation
(sessionkit.agent) on the SDK's background loop."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sessionkit import _loop
from sessionkit.agent import AsyncAgent, AsyncWorkflow, Task


class Agent:
    """An agent of a Session. ``agent.chat("...")`` returns the answer; ``agent.chat("...",
    stream=True)`` or ``agent.stream("...")`` yields its text pieces as they are generated."""

    def __init__(self, inner: AsyncAgent) -> None:
        self._async = inner

    @property
    def name(self) -> str:
        return self._async.name

    @property
    def role(self) -> str:
        return self._async.role

    @property
    def instructions(self) -> str | None:
        return self._async.instructions

    @property
    def definition(self) -> dict[str, Any] | None:
        return self._async.definition

    @property
    def last_metadata(self) -> dict[str, Any]:
        """The last turn's metadata: model, usage, memories and chunks used, tool calls, latency."""
        return self._async.last_metadata

    def chat(self, message: str, *, stream: bool = False, **options: Any) -> Any:
        if stream:
            return self.stream(message, **options)
        return _loop.run(self._async.chat_result(message, **options))["text"]

    chat.__doc__ = AsyncAgent.chat.__doc__

    def chat_result(self, message: str, **options: Any) -> dict[str, Any]:
        return _loop.run(self._async.chat_result(message, **options))

    chat_result.__doc__ = AsyncAgent.chat_result.__doc__

    def stream(self, message: str, **options: Any) -> Iterator[str]:
        return _loop.iterate(self._async.stream(message, **options))

    stream.__doc__ = AsyncAgent.stream.__doc__

    def events(self, message: str, *, stream: bool = True, **options: Any) -> Iterator[dict[str, Any]]:
        return _loop.iterate(self._async.events(message, stream=stream, **options))

    events.__doc__ = AsyncAgent.events.__doc__

    def history(self, limit: int = 100) -> list[dict[str, Any]]:
        return _loop.run(self._async.history(limit))

    history.__doc__ = AsyncAgent.history.__doc__

    def delete(self) -> bool:
        return _loop.run(self._async.delete())

    def __repr__(self) -> str:
        return f"Agent(name={self.name!r}, role={self.role!r}, session={self._async.session.session_id!r})"


class Workflow:
    """Agents of one Session working through tasks in order (process="sequential"); the seed's
    ``PraisonAIAgents``. ``start()`` returns the last task's output; ``result`` holds every task's."""

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
        self._async = AsyncWorkflow(agents, tasks, memory, process, input=input, stream=stream)

    @property
    def tasks(self) -> list[Task]:
        return self._async.tasks

    @property
    def result(self) -> dict[str, Any] | None:
        return self._async.result

    def start(self) -> str:
        return _loop.run(self._async.start())

    start.__doc__ = AsyncWorkflow.start.__doc__

    def events(self) -> Iterator[dict[str, Any]]:
        return _loop.iterate(self._async.events())


#: The seed's name for a workflow.
PraisonAIAgents = Workflow
