"""The watcher caps' shared parts: the state service counts its gRPC watchers and the gateway its SSE
watchers (which share one upstream stream per session, so the state service sees one), by the same
tenant and with the same refusal."""

from __future__ import annotations

from sessionkit import reasons
from sessionkit.errors import SessionKitError


def tenant_of(app_name: str) -> str:
    """The tenant of an app name: the part before ``:`` (an API key's tenant prefixes its apps)."""
    return app_name.split(":", 1)[0]


def too_many_watchers(scope: str, count: int, limit: int, per: str) -> SessionKitError:
    return reasons.TOO_MANY_WATCHERS.error(
        scope=scope,
        count=count,
        limit=limit,
        setting=f"SESSIONKIT_MAX_WATCHERS_PER_{per}",
        metadata={"limit": str(limit)},
    )
