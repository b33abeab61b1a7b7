"""The sync Agent's and Workflow's types. Written by sessionkit._stubgen: do not edit."""

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sessionkit._sync import SyncFacade
from sessionkit.agent import AsyncAgent, AsyncWorkflow, Task
from sessionkit.session import Session

class Agent(SyncFacade[AsyncAgent]):
    session: Session
    name: str
    role: str
    instructions: str | None
    functions: dict[str, Callable[..., Any]]
    definition: dict[str, Any] | None
    last_metadata: dict[str, Any]
    def chat(self, message: str, *, stream: bool = ..., **options: Any) -> Any: ...
    def chat_result(self, message: str, **options: Any) -> dict[str, Any]: ...
    def delete(self) -> bool: ...
    def ensure(self) -> dict[str, Any]: ...
    def events(self, message: str, *, stream: bool = ..., **options: Any) -> Iterator[dict[str, Any]]: ...
    def history(self, limit: int = ...) -> list[dict[str, Any]]: ...
    def stream(self, message: str, **options: Any) -> Iterator[str]: ...

class Workflow(SyncFacade[AsyncWorkflow]):
    tasks: list[Task]
    agents: list[Agent]
    session: Session
    use_memory: bool
    input: str
    stream: bool
    result: dict[str, Any] | None
    def __init__(
        self,
        agents: Sequence[Any] | None = ...,
        tasks: Sequence[Task] | None = ...,
        memory: Any = ...,
        process: str = ...,
        *,
        input: str = ...,
        stream: bool = ...,
    ) -> None: ...
    def astart(self) -> str: ...
    def events(self) -> Iterator[dict[str, Any]]: ...
    def start(self) -> str: ...

PraisonAIAgents = Workflow
