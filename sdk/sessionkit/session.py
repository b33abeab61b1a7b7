"""Session: the synchronous API of the seed (PraisonAI's Session), a thin wrapper over AsyncSession."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal, overload

from sessionkit import _loop, agent_sync
from sessionkit.async_session import AsyncSession
from sessionkit.ids import DEFAULT
from sessionkit.retry import RetryPolicy
from sessionkit.state_client import Event, SessionInfo, StateChange, StateVersion


class Session:
    """A persistent session: state, an event log, and (as their services land) memory, knowledge, agents.

    ``Session("x")`` just works: with no address configured it uses an embedded local server that keeps
    its data under ``storage_path`` (default ``.sessionkit``), shared safely by every process using that
    path. ``Session("x", address="host:port")`` (or ``SESSIONKIT_ADDRESS``) talks to running services.

    ``auto_save=True`` (the default) writes each change through at once. With ``auto_save=False``,
    ``set_state``/``delete_state`` changes stay in this object (``get_state`` sees them) until
    ``save_state()`` writes them in one atomic write; ``restore_state()`` returns the saved state.
    Keys prefixed ``user:`` are shared by the user's sessions, ``app:`` by every user of the app,
    and ``temp:`` keys are never persisted.
    """

    def __init__(
        self,
        session_id: str | None = None,
        user_id: str | None = DEFAULT,
        remote_url: str | None = None,
        api_key: str | None = None,
        auto_save: bool = True,
        storage_path: str | Path | None = None,
        memory_config: dict[str, Any] | None = None,
        knowledge_config: dict[str, Any] | None = None,
        timeout: float = 30,
        agent_url: str | None = None,
        *,
        address: str | None = None,
        app_name: str | None = None,
        ttl: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._async = AsyncSession(
            session_id,
            user_id,
            remote_url,
            api_key,
            auto_save,
            storage_path,
            memory_config,
            knowledge_config,
            timeout,
            agent_url,
            address=address,
            app_name=app_name,
            ttl=ttl,
            retry=retry,
        )

    # -- identity and properties ---------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        return self._async.session_id

    @property
    def user_id(self) -> str:
        return self._async.user_id

    @property
    def app_name(self) -> str:
        return self._async.app_name

    @property
    def auto_save(self) -> bool:
        return self._async.auto_save

    @property
    def storage_path(self) -> Path:
        return self._async.storage_path

    @property
    def memory_config(self) -> dict[str, Any]:
        return self._async.memory_config

    @property
    def knowledge_config(self) -> dict[str, Any]:
        return self._async.knowledge_config

    @property
    def is_remote(self) -> bool:
        return self._async.is_remote

    @property
    def session_dir(self) -> Path | None:
        return self._async.session_dir

    @property
    def memory(self) -> SyncSessionMemory:
        """This session's memory as one object (add, search, context, clear), e.g. for a workflow."""
        return SyncSessionMemory(self)

    @property
    def knowledge(self) -> SyncSessionKnowledge:
        """This session's knowledge as one object (add, search, list, delete, clear)."""
        return SyncSessionKnowledge(self)

    # -- state ---------------------------------------------------------------------------------------

    def save_state(self, data: dict[str, Any] | None = None, *, expected_version: int | None = None) -> int:
        return _loop.run(self._async.save_state(data, expected_version=expected_version))

    save_state.__doc__ = AsyncSession.save_state.__doc__

    def restore_state(self) -> dict[str, Any]:
        return _loop.run(self._async.restore_state())

    restore_state.__doc__ = AsyncSession.restore_state.__doc__

    def get_state(self, key: str, default: Any = None) -> Any:
        return _loop.run(self._async.get_state(key, default))

    def set_state(self, key: str, value: Any, *, expected_version: int | None = None) -> int | None:
        return _loop.run(self._async.set_state(key, value, expected_version=expected_version))

    set_state.__doc__ = AsyncSession.set_state.__doc__

    def delete_state(self, key: str, *, expected_version: int | None = None) -> bool:
        return _loop.run(self._async.delete_state(key, expected_version=expected_version))

    def clear_state(
        self,
        *,
        include_user_scope: bool = False,
        include_app_scope: bool = False,
        expected_version: int | None = None,
    ) -> int:
        return _loop.run(
            self._async.clear_state(
                include_user_scope=include_user_scope,
                include_app_scope=include_app_scope,
                expected_version=expected_version,
            )
        )

    clear_state.__doc__ = AsyncSession.clear_state.__doc__

    def increment_state(self, key: str, delta: int | float = 1) -> int | float:
        return _loop.run(self._async.increment_state(key, delta))

    increment_state.__doc__ = AsyncSession.increment_state.__doc__

    def append_state(self, key: str, *values: Any) -> int:
        return _loop.run(self._async.append_state(key, *values))

    append_state.__doc__ = AsyncSession.append_state.__doc__

    def state_version(self) -> int:
        return _loop.run(self._async.state_version())

    def state_history(self, limit: int = 20) -> list[StateVersion]:
        return _loop.run(self._async.state_history(limit))

    state_history.__doc__ = AsyncSession.state_history.__doc__

    def restore_state_version(self, version: int, *, expected_version: int | None = None) -> int:
        return _loop.run(self._async.restore_state_version(version, expected_version=expected_version))

    restore_state_version.__doc__ = AsyncSession.restore_state_version.__doc__

    def watch_state(self, since_version: int = 0) -> Iterator[StateChange]:
        """The current state (operation SNAPSHOT), then every change as it happens (blocking iterator)."""
        return _loop.iterate(self._async.watch_state(since_version))

    # -- memory ---------------------------------------------------------------------------------------

    def add_memory(self, text: str, memory_type: str = "long", **metadata: Any) -> dict[str, Any] | None:
        return _loop.run(self._async.add_memory(text, memory_type, **metadata))

    add_memory.__doc__ = AsyncSession.add_memory.__doc__

    def store_short_memory(self, content: str, **metadata: Any) -> dict[str, Any] | None:
        return _loop.run(self._async.store_short_memory(content, **metadata))

    store_short_memory.__doc__ = AsyncSession.store_short_memory.__doc__

    def store_long_memory(
        self, content: str, quality_score: float = 0.7, **metadata: Any
    ) -> dict[str, Any] | None:
        return _loop.run(self._async.store_long_memory(content, quality_score, **metadata))

    store_long_memory.__doc__ = AsyncSession.store_long_memory.__doc__

    def extract_memories(
        self,
        messages: list[dict[str, str]],
        memory_type: str = "long",
        *,
        metadata: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any] | None:
        return _loop.run(
            self._async.extract_memories(messages, memory_type, metadata=metadata, dry_run=dry_run)
        )

    extract_memories.__doc__ = AsyncSession.extract_memories.__doc__

    def search_memory(
        self,
        query: str,
        memory_type: str = "all",
        limit: int = 5,
        *,
        min_quality: float | None = None,
        metadata_filter: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        return _loop.run(
            self._async.search_memory(
                query, memory_type, limit, min_quality=min_quality, metadata_filter=metadata_filter
            )
        )

    search_memory.__doc__ = AsyncSession.search_memory.__doc__

    def get_memory_context(self, query: str, max_items: int = 3) -> str:
        return _loop.run(self._async.get_memory_context(query, max_items))

    get_memory_context.__doc__ = AsyncSession.get_memory_context.__doc__

    def get_context(self, query: str, max_items: int = 3) -> str:
        return _loop.run(self._async.get_context(query, max_items))

    get_context.__doc__ = AsyncSession.get_context.__doc__

    # -- knowledge -----------------------------------------------------------------------------------

    def add_knowledge(self, source: str | os.PathLike[str], **options: Any) -> dict[str, Any]:
        return _loop.run(self._async.add_knowledge(source, **options))

    add_knowledge.__doc__ = AsyncSession.add_knowledge.__doc__

    def search_knowledge(self, query: str, limit: int = 5, **options: Any) -> list[dict[str, Any]]:
        return _loop.run(self._async.search_knowledge(query, limit, **options))

    search_knowledge.__doc__ = AsyncSession.search_knowledge.__doc__

    def list_knowledge(self, scopes: list[str] | None = None) -> list[dict[str, Any]]:
        return _loop.run(self._async.list_knowledge(scopes))

    list_knowledge.__doc__ = AsyncSession.list_knowledge.__doc__

    def delete_knowledge(self, source: str, scope: str = "session") -> bool:
        return _loop.run(self._async.delete_knowledge(source, scope))

    delete_knowledge.__doc__ = AsyncSession.delete_knowledge.__doc__

    def clear_knowledge(self, scope: str = "session", collection: str = "") -> int:
        return _loop.run(self._async.clear_knowledge(scope, collection))

    clear_knowledge.__doc__ = AsyncSession.clear_knowledge.__doc__

    def clear_memory(self, memory_type: str = "all", metadata_filter: dict[str, Any] | None = None) -> int:
        return _loop.run(self._async.clear_memory(memory_type, metadata_filter))

    clear_memory.__doc__ = AsyncSession.clear_memory.__doc__

    def add_memories(self, memories: list[Any], memory_type: str = "long") -> list[dict[str, Any]] | None:
        return _loop.run(self._async.add_memories(memories, memory_type))

    add_memories.__doc__ = AsyncSession.add_memories.__doc__

    def get_memory(self, memory_id: str) -> dict[str, Any]:
        return _loop.run(self._async.get_memory(memory_id))

    def list_memories(
        self, memory_type: str = "all", metadata_filter: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        return _loop.run(self._async.list_memories(memory_type, metadata_filter))

    def update_memory(
        self,
        memory_id: str,
        text: str | None = None,
        *,
        metadata: dict[str, Any] | None = None,
        quality_score: float | None = None,
    ) -> dict[str, Any]:
        return _loop.run(
            self._async.update_memory(memory_id, text, metadata=metadata, quality_score=quality_score)
        )

    def delete_memory(self, memory_id: str) -> bool:
        return _loop.run(self._async.delete_memory(memory_id))

    def memory_history(self, memory_id: str) -> list[dict[str, Any]]:
        return _loop.run(self._async.memory_history(memory_id))

    memory_history.__doc__ = AsyncSession.memory_history.__doc__

    # -- events --------------------------------------------------------------------------------------

    def add_event(
        self, role: str, content: str, *, author: str = "", metadata: dict[str, Any] | None = None
    ) -> Event:
        return _loop.run(self._async.add_event(role, content, author=author, metadata=metadata))

    add_event.__doc__ = AsyncSession.add_event.__doc__

    def get_events(self, limit: int | None = None, *, author: str = "") -> list[Event]:
        return _loop.run(self._async.get_events(limit, author=author))

    get_events.__doc__ = AsyncSession.get_events.__doc__

    # -- agents ---------------------------------------------------------------------------------------

    def Agent(
        self,
        name: str,
        role: str = "Assistant",
        instructions: str | None = None,
        tools: list[Any] | None = None,
        memory: bool = True,
        knowledge: list[str] | bool | None = None,
        llm: str | None = None,
        model: str | None = None,
        **kwargs: Any,
    ) -> agent_sync.Agent:
        agent = self._async.Agent(name, role, instructions, tools, memory, knowledge, llm, model, **kwargs)
        # Stored at once, so a bad definition fails here, where it is written.
        _loop.run(agent.ensure())
        return agent_sync.Agent(agent)

    Agent.__doc__ = AsyncSession.Agent.__doc__
    create_agent = Agent  # the seed's legacy name

    def agents(self) -> list[agent_sync.Agent]:
        return [agent_sync.Agent(a) for a in _loop.run(self._async.agents())]

    agents.__doc__ = AsyncSession.agents.__doc__

    def get_agent(self, name: str) -> agent_sync.Agent:
        return agent_sync.Agent(_loop.run(self._async.get_agent(name)))

    get_agent.__doc__ = AsyncSession.get_agent.__doc__

    # -- remote --------------------------------------------------------------------------------------

    def test_remote_connection(self) -> bool:
        return _loop.run(self._async.test_remote_connection())

    test_remote_connection.__doc__ = AsyncSession.test_remote_connection.__doc__

    @overload
    def chat(self, message: str, *, stream: Literal[False] = False, **kwargs: Any) -> str: ...

    @overload
    def chat(self, message: str, *, stream: Literal[True], **kwargs: Any) -> Iterator[str]: ...

    def chat(self, message: str, *, stream: bool = False, **kwargs: Any) -> str | Iterator[str]:
        """Send ``message`` to the remote agent and return its answer (see AsyncSession.chat).
        ``stream=True``: a blocking iterator of the reply's text pieces as they arrive
        (``for piece in session.chat("hi", stream=True): ...``)."""
        if stream:
            pieces: AsyncIterator[str] = _loop.run(self._async.chat(message, stream=True, **kwargs))
            return _loop.iterate(pieces)
        answer: str = _loop.run(self._async.chat(message, **kwargs))
        return answer

    @overload
    def send_message(self, message: str, *, stream: Literal[False] = False, **kwargs: Any) -> str: ...

    @overload
    def send_message(self, message: str, *, stream: Literal[True], **kwargs: Any) -> Iterator[str]: ...

    def send_message(self, message: str, *, stream: bool = False, **kwargs: Any) -> str | Iterator[str]:
        """The ADK-style name of :meth:`chat`."""
        return self.chat(message, stream=stream, **kwargs)  # type: ignore[call-overload,no-any-return]

    # -- the session itself --------------------------------------------------------------------------

    def info(self) -> SessionInfo:
        return _loop.run(self._async.info())

    def delete(self) -> bool:
        return _loop.run(self._async.delete())

    delete.__doc__ = AsyncSession.delete.__doc__

    def close(self) -> None:
        _loop.run(self._async.close())

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return repr(self._async).replace("AsyncSession", "Session", 1)


class SyncSessionKnowledge:
    """``session.knowledge``: the session's knowledge methods on one object."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, source: str | os.PathLike[str], **options: Any) -> dict[str, Any]:
        return self.session.add_knowledge(source, **options)

    def search(self, query: str, limit: int = 5) -> list[dict[str, Any]]:
        return self.session.search_knowledge(query, limit)

    def list(self) -> list[dict[str, Any]]:
        return self.session.list_knowledge()

    def delete(self, source: str) -> bool:
        return self.session.delete_knowledge(source)

    def clear(self, scope: str = "session") -> int:
        return self.session.clear_knowledge(scope)


class SyncSessionMemory:
    """``session.memory``: the session's memory methods on one object."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, text: str, memory_type: str = "long", **metadata: Any) -> dict[str, Any] | None:
        return self.session.add_memory(text, memory_type, **metadata)

    def search(self, query: str, memory_type: str = "all", limit: int = 5) -> list[dict[str, Any]]:
        return self.session.search_memory(query, memory_type, limit)

    def extract(self, messages: list[dict[str, str]], memory_type: str = "long") -> dict[str, Any] | None:
        return self.session.extract_memories(messages, memory_type)

    def context(self, query: str, max_items: int = 3) -> str:
        return self.session.get_memory_context(query, max_items)

    def clear(self, memory_type: str = "all") -> int:
        return self.session.clear_memory(memory_type)
