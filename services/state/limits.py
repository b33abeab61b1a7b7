"""Size and paging limits of the state service (configurable through StateSettings)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StateLimits:
    #: Largest JSON text of one scope's state (a session's own keys, a user's, an app's).
    max_state_bytes: int = 1 << 20
    #: Largest event (content plus metadata JSON).
    max_event_bytes: int = 256 << 10
    #: Versions of a session's state kept for history and watch replay.
    history_limit: int = 100
    max_page_size: int = 1000
    #: Watch streams open at once on one server, per session and per tenant (the app name's part
    #: before ':'): each is a stream the server keeps and feeds.
    max_watchers_per_session: int = 100
    max_watchers_per_tenant: int = 1000
