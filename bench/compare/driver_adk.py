"""google-adk's DatabaseSessionService on the scenarios (run by its own virtualenv: see run.py).

State changes go through append_event with an EventActions.state_delta (ADK's only write path);
reads are get_session. Memory: ADK ships no database memory service besides its SQLite one
(google.adk.memory._sqlite_memory_service, a private module: FTS5 keyword search scoped by
app and user); its other memory services are in-process (keyword) or Vertex AI (cloud). The memory
scenario runs the SQLite memory service in the data directory whatever the session database.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scenarios import Adapter, main

APP = "bench"


class Adk(Adapter):
    name = "adk"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        logging.disable(logging.WARNING)
        from google.adk.events import Event, EventActions  # type: ignore[import-not-found,import-untyped,unused-ignore]
        from google.adk.memory._sqlite_memory_service import SqliteMemoryService  # type: ignore[import-not-found,import-untyped,unused-ignore]
        from google.adk.sessions import DatabaseSessionService  # type: ignore[import-not-found,import-untyped,unused-ignore]
        from google.adk.sessions.base_session_service import GetSessionConfig  # type: ignore[import-not-found,import-untyped,unused-ignore]
        from google.genai import types  # type: ignore[import-not-found,import-untyped,unused-ignore]

        self.Event, self.EventActions, self.types = Event, EventActions, types
        self.no_events = GetSessionConfig(num_recent_events=0)
        self.loop = asyncio.new_event_loop()
        url = args.db_url or f"sqlite+aiosqlite:///{Path(args.dir) / 'sessions.db'}"
        self.svc = DatabaseSessionService(db_url=url)
        self.mem = SqliteMemoryService(str(Path(args.dir) / "memory.db"))
        self.notes.append(
            "memory: the private SqliteMemoryService (FTS5 keyword search, scoped by app and user); "
            "no PostgreSQL memory service, no local semantic search"
        )
        self.notes.append(
            "increments: read state, append_event(state_delta n+1); a stale session raises and the "
            "driver re-reads and retries (counted as conflicts)"
        )

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def session(self, sid: str, user: str = "u") -> Any:
        s = self.run(self.svc.get_session(app_name=APP, user_id=user, session_id=sid))
        if s is None:
            try:
                s = self.run(self.svc.create_session(app_name=APP, user_id=user, session_id=sid))
            except Exception:  # another process created it first
                s = self.run(self.svc.get_session(app_name=APP, user_id=user, session_id=sid))
        return s

    def _append(self, s: Any, delta: dict[str, Any] | None = None, text: str | None = None) -> None:
        content = self.types.Content(role="user", parts=[self.types.Part(text=text)]) if text else None
        event = self.Event(
            author="user",
            invocation_id=uuid.uuid4().hex,
            content=content,
            actions=self.EventActions(state_delta=delta or {}),
        )
        self.run(self.svc.append_event(s, event))

    def _fresh(self, s: Any, events: bool = False) -> Any:
        return self.run(
            self.svc.get_session(
                app_name=APP, user_id=s.user_id, session_id=s.id, config=None if events else self.no_events
            )
        )

    def set_state(self, s: Any, key: str, value: Any) -> None:
        self._append(s, {key: value})

    def get_state(self, s: Any, key: str) -> Any:
        return self._fresh(s).state.get(key)

    def save_state(self, s: Any, state: dict[str, Any]) -> None:
        self._append(s, dict(state))

    def restore_state(self, s: Any) -> dict[str, Any]:
        return dict(self._fresh(s).state)

    def add_event(self, s: Any, text: str) -> None:
        self._append(s, text=text)

    def read_events(self, s: Any) -> list[str]:
        got = self._fresh(s, events=True)
        return [e.content.parts[0].text for e in got.events if e.content and e.content.parts]

    def increment(self, s: Any, key: str) -> int:
        conflicts = 0
        while True:
            fresh = self._fresh(s)
            try:
                self._append(fresh, {key: int(fresh.state.get(key, 0)) + 1})
                return conflicts
            except Exception as e:
                if "stale" not in type(e).__name__.lower() and "last_update_time" not in str(e):
                    raise
                conflicts += 1
                if conflicts > 1000:
                    raise

    def add_memories(self, s: Any, texts: list[str]) -> None:
        events = [
            self.Event(
                author="user",
                invocation_id=uuid.uuid4().hex,
                content=self.types.Content(role="user", parts=[self.types.Part(text=t)]),
            )
            for t in texts
        ]
        self.run(
            self.mem.add_events_to_memory(app_name=APP, user_id=s.user_id, events=events, session_id=s.id)
        )

    def search_memory(self, s: Any, query: str, limit: int) -> list[str]:
        got = self.run(self.mem.search_memory(app_name=APP, user_id=s.user_id, query=query))
        texts = []
        for m in got.memories[:limit]:  # no limit parameter: it returns up to max_results (50)
            parts = m.content.parts if m.content else None
            texts.append(" ".join(p.text or "" for p in parts or []))
        return texts

    def close(self) -> None:
        try:
            self.run(self.svc.close())
            self.run(self.mem.close())
        finally:
            self.loop.close()


if __name__ == "__main__":
    main(Adk, __file__)
