"""praisonaiagents' Session on the scenarios (run by its own virtualenv: see run.py).

Its state lives as rows of its short-term memory (SQLite files in the working directory's
.praisonai/), so the driver runs in the data directory with PRAISONAI_HOME pointing into it. Its
Session memory, as created by default, is keyword search (SQL LIKE) in a long-term SQLite file;
semantic search needs chromadb plus an embedding API (OpenAI's by default, through litellm).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scenarios import Adapter, main


class Praison(Adapter):
    name = "praisonai"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        os.environ["PRAISONAI_HOME"] = str(Path(args.dir) / "home")
        os.chdir(args.dir)  # its memory files go to the working directory's .praisonai/
        logging.disable(logging.WARNING)
        from praisonaiagents import Session  # type: ignore[import-not-found,import-untyped,unused-ignore]

        self.Session = Session
        self.notes.append(
            "state is stored as short-term memory rows; restore_state reads the first 10 rows that "
            "LIKE-match 'Session state:' across every session of the store"
        )
        self.notes.append(
            "memory: default Session config (keyword LIKE search over one long-term SQLite file of the "
            "whole working directory; Session.search_memory passes no user_id); semantic search needs "
            "chromadb + an embedding API (OpenAI by default), not run here"
        )

    def session(self, sid: str, user: str = "u") -> Any:
        return self.Session(session_id=sid, user_id=user)

    def set_state(self, s: Any, key: str, value: Any) -> None:
        s.set_state(key, value)

    def get_state(self, s: Any, key: str) -> Any:
        return s.get_state(key)

    def save_state(self, s: Any, state: dict[str, Any]) -> None:
        s.save_state(state)

    def restore_state(self, s: Any) -> dict[str, Any]:
        return dict(s.restore_state())

    def add_event(self, s: Any, text: str) -> None:
        # No event log in its Session: the chat history lives in its agents. The closest user-facing
        # call is short-term memory, which keeps the order of insertion.
        s.add_memory(text, memory_type="short")

    def read_events(self, s: Any) -> list[str]:
        rows = s.memory.search_short_term("event ", limit=10**6)
        # Its search ranks rows; a user wanting the order of insertion sorts by the row id.
        rows.sort(key=lambda r: int(r["id"]) if str(r.get("id", "")).isdigit() else 0)
        return [r["text"] for r in rows if r.get("metadata", {}).get("session_id") == s.session_id]

    def increment(self, s: Any, key: str) -> int:
        s.increment_state(key)
        return 0

    def add_memories(self, s: Any, texts: list[str]) -> None:
        for text in texts:  # no batch call
            s.add_memory(text)

    def search_memory(self, s: Any, query: str, limit: int) -> list[str]:
        return [r["text"] for r in s.search_memory(query, limit=limit)]


if __name__ == "__main__":
    main(Praison, __file__)
