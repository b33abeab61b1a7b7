"""What the StateService tests share: the sessions the ``service`` fixture creates (tests/state/conftest.py)
and the limits it configures."""

from __future__ import annotations

from typing import Any

from sessionkit_server.state.service import StateService
from sessionkit_server.state.store import SessionKey

HISTORY_LIMIT = 20  # what the state_store fixture configures
MAX_STATE = 2048
MAX_EVENT = 4096
S1 = SessionKey("app", "alice", "s1")
S2 = SessionKey("app", "alice", "s2")
BOB = SessionKey("app", "bob", "s1")


async def snapshot(service: StateService, key: SessionKey = S1) -> tuple[dict[str, Any], int]:
    return await service.get_state(key)
