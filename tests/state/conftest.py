"""The StateService business layer's fixture, over every store (the ``state_store`` fixture: SQLite,
SQLite behind the read cache, and PostgreSQL)."""

from __future__ import annotations

import pytest

from sessionkit_server.state.limits import StateLimits
from sessionkit_server.state.service import StateService
from sessionkit_server.state.store import StateStore
from tests.state.service_support import BOB, HISTORY_LIMIT, MAX_EVENT, MAX_STATE, S1, S2


@pytest.fixture
async def service(state_store: StateStore) -> StateService:
    limits = StateLimits(max_state_bytes=MAX_STATE, max_event_bytes=MAX_EVENT, history_limit=HISTORY_LIMIT)
    svc = StateService(state_store, limits, poll_interval=0.05)
    for key in (S1, S2, BOB):
        await svc.create_session(key)
    return svc
