"""A session's state (scoped keys, auto_save, versions, compare-and-set, watch) and its event log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sessionkit.errors import InvalidArgument, StateConflict
from sessionkit.jsonvalues import check_json
from sessionkit.session_core import DELETED, SCOPES, TEMP, SessionCore
from sessionkit.state_client import Event, StateChange, StateVersion


class StateMixin(SessionCore):
    # -- state --------------------------------------------------------------------------------------

    async def save_state(
        self, data: dict[str, Any] | None = None, *, expected_version: int | None = None
    ) -> int:
        """Replace the saved state with ``data`` (``user:``/``app:`` keys in it are set in their scope;
        ``temp:`` keys are kept in this object only). Returns the new version. Unsaved ``set_state``
        changes (auto_save=False) are discarded: ``data`` is the whole new state. With no ``data``,
        writes the unsaved changes."""
        if data is None:
            return await self._flush(expected_version)
        checked = check_json(data, "state")
        if not isinstance(checked, dict):
            raise InvalidArgument(f"save_state takes a dict, not {type(data).__name__}")
        persisted = {k: v for k, v in checked.items() if not k.startswith(TEMP)}
        version = await self._call(lambda: self._state.save_state(self._ref, persisted, expected_version))
        self._temp = {k: v for k, v in checked.items() if k.startswith(TEMP)}
        self._pending.clear()
        return version

    async def restore_state(self) -> dict[str, Any]:
        """The saved state: the session's keys merged with its ``user:`` and ``app:`` keys (and this
        object's ``temp:`` keys)."""
        state, _ = await self._call(lambda: self._state.get_state(self._ref))
        state.update(self._temp)
        return state

    async def get_state(self, key: str, default: Any = None) -> Any:
        if key.startswith(TEMP):
            return self._temp.get(key, default)
        if key in self._pending:
            value = self._pending[key]
            return default if value is DELETED else value
        state, _ = await self._call(lambda: self._state.get_state(self._ref, [key]))
        return state.get(key, default)

    async def set_state(self, key: str, value: Any, *, expected_version: int | None = None) -> int | None:
        """Set one key. Returns the new version when written through, None when kept for save_state()."""
        checked = check_json(value, key)
        if key.startswith(TEMP):
            self._temp[key] = checked
            return None
        if not self.auto_save and expected_version is None:
            self._pending[key] = checked
            return None
        return await self._call(lambda: self._state.set_value(self._ref, key, checked, expected_version))

    async def delete_state(self, key: str, *, expected_version: int | None = None) -> bool:
        """Delete one key; returns whether it existed (True when kept for save_state())."""
        if key.startswith(TEMP):
            return self._temp.pop(key, DELETED) is not DELETED
        if not self.auto_save and expected_version is None:
            self._pending[key] = DELETED
            return True
        _, existed = await self._call(lambda: self._state.delete_value(self._ref, key, expected_version))
        return existed

    async def clear_state(
        self,
        *,
        include_user_scope: bool = False,
        include_app_scope: bool = False,
        expected_version: int | None = None,
    ) -> int:
        """Delete the session's own keys (and, when asked, the user's or app's shared keys)."""
        self._temp.clear()
        self._pending.clear()
        return await self._call(
            lambda: self._state.clear_state(
                self._ref,
                expected_version,
                include_user_scope=include_user_scope,
                include_app_scope=include_app_scope,
            )
        )

    async def increment_state(self, key: str, delta: int | float = 1) -> int | float:
        """Atomically add ``delta`` to a numeric key on the server (missing counts as 0); the race-free
        form of ``set_state(key, get_state(key, 0) + delta)``. Returns the new value."""
        _, value = await self._call(lambda: self._state.increment(self._ref, key, delta))
        return value

    async def append_state(self, key: str, *values: Any) -> int:
        """Atomically append values to a list key on the server (missing counts as []). Returns the length."""
        _, length = await self._call(lambda: self._state.append(self._ref, key, list(values)))
        return length

    async def state_version(self) -> int:
        return (await self.info()).version

    async def state_history(self, limit: int = 20) -> list[StateVersion]:
        """Earlier versions of the session's own keys, newest first (bounded retention on the server)."""
        versions, _ = await self._call(lambda: self._state.list_versions(self._ref, limit))
        return versions

    async def restore_state_version(self, version: int, *, expected_version: int | None = None) -> int:
        """Make an earlier version's keys current again, as a new version (returned)."""
        self._pending.clear()
        return await self._call(lambda: self._state.restore_version(self._ref, version, expected_version))

    async def watch_state(self, since_version: int = 0) -> AsyncIterator[StateChange]:
        """The current state (operation SNAPSHOT), then every change as it happens."""
        await self._ensure()
        async for change in self._state.watch(self._ref, since_version):
            yield change

    async def _flush(self, expected_version: int | None) -> int:
        """Write the unsaved changes as one SaveState: the session's keys as they will be, the
        user:/app: keys set and deleted, all in one version-checked transaction on the server."""
        pending = dict(self._pending)
        for _ in range(10):
            state, version = await self._call(lambda: self._state.get_state(self._ref))
            if not pending:
                return version
            if expected_version is not None and expected_version != version:
                raise StateConflict(f"session is at version {version}, not the expected {expected_version}")
            own = {k: v for k, v in state.items() if not k.startswith(SCOPES)}
            deleted = [k for k, v in pending.items() if k.startswith(SCOPES) and v is DELETED]
            for key, value in pending.items():
                if value is DELETED:
                    own.pop(key, None)
                else:
                    own[key] = value
            try:
                new_version = await self._state.save_state(self._ref, own, version, delete_keys=deleted)
            except StateConflict:
                if expected_version is not None:
                    raise
                continue  # someone wrote in between: re-read and apply the changes again
            self._pending.clear()
            return new_version
        raise StateConflict("save_state() lost the race for the session 10 times in a row; try again")

    # -- events -------------------------------------------------------------------------------------

    async def add_event(
        self, role: str, content: str, *, author: str = "", metadata: dict[str, Any] | None = None
    ) -> Event:
        """Append to the session's event log (chat messages, tool calls, ...)."""
        return await self._call(lambda: self._state.append_event(self._ref, role, content, author, metadata))

    async def get_events(self, limit: int | None = None, *, author: str = "") -> list[Event]:
        """The most recent ``limit`` events, oldest first; every event when limit is None."""
        if limit is not None:
            if limit < 1:
                raise InvalidArgument(f"limit must be at least 1, not {limit}")
            events, _ = await self._call(
                lambda: self._state.list_events(self._ref, tail=limit, author=author)
            )
            return events
        return [event async for event in self.iter_events(author=author)]

    async def iter_events(self, *, author: str = "", page_size: int = 500) -> AsyncIterator[Event]:
        token = ""
        while True:
            events, token = await self._call(
                lambda page_token=token: self._state.list_events(
                    self._ref, page_size, page_token, author=author
                )  # type: ignore[misc]
            )
            for event in events:
                yield event
            if not token:
                return
