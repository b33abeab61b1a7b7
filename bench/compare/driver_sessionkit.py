"""sessionkit's Session on the scenarios: embedded (--dir is the storage_path, the SDK starts the local
server) or over gRPC (--address of a running ``sessionkit serve``). Run by the project's own python."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scenarios import Adapter, main


class SessionKit(Adapter):
    name = "sessionkit"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        from sessionkit import Session

        self.Session = Session
        self.opened: list[Any] = []

    def session(self, sid: str, user: str = "u") -> Any:
        where = {"address": self.args.address} if self.args.address else {"storage_path": self.args.dir}
        s = self.Session(sid, user_id=user, timeout=600, **where)  # a batch of 500 adds embeds 500 texts
        self.opened.append(s)
        return s

    def set_state(self, s: Any, key: str, value: Any) -> None:
        s.set_state(key, value)

    def get_state(self, s: Any, key: str) -> Any:
        return s.get_state(key)

    def save_state(self, s: Any, state: dict[str, Any]) -> None:
        s.save_state(state)

    def restore_state(self, s: Any) -> dict[str, Any]:
        return dict(s.restore_state())

    def add_event(self, s: Any, text: str) -> None:
        s.add_event("user", text)

    def read_events(self, s: Any) -> list[str]:
        return [e.content for e in s.iter_events(page_size=1000)]

    def increment(self, s: Any, key: str) -> int:
        s.increment_state(key)
        return 0

    def add_memories(self, s: Any, texts: list[str]) -> None:
        s.add_memories(texts)

    def search_memory(self, s: Any, query: str, limit: int) -> list[str]:
        return [r["text"] for r in s.search_memory(query, limit=limit)]

    def close(self) -> None:
        for s in self.opened:
            s.close()
        # The embedded server outlives its clients (it stops after 10 idle minutes): stop it now, so
        # it does not share the machine with the next system's run.
        lock = Path(self.args.dir) / "server.lock"
        if not self.args.address and not self.args.worker and lock.exists():
            with contextlib.suppress(ValueError, IndexError, ProcessLookupError):
                os.kill(int(lock.read_text().split()[0]), signal.SIGTERM)


if __name__ == "__main__":
    main(SessionKit, __file__)
