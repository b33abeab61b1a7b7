"""Readiness that follows dependencies: a background task checks what the services need (the database,
a Chroma server) every few seconds and reports each affected service NOT_SERVING on the gRPC health
service while one is down, SERVING once it is back. Liveness (the service name "") is never touched:
a database outage should take replicas out of the load balancers, not get their pods restarted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from grpc_health.v1 import health_pb2
from sqlalchemy import Connection, text

from sessionkit_server.common.db import Database

log = logging.getLogger("sessionkit.health")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class Dependency:
    """Something services need: ``check()`` returns when it is up and raises when it is down."""

    name: str
    check: Callable[[], Awaitable[None]]
    #: The gRPC health names of the services that cannot serve without it.
    services: tuple[str, ...]


def database_dependency(db: Database, services: Sequence[str]) -> Dependency:
    async def check() -> None:
        def select_one(conn: Connection) -> None:
            conn.execute(text("SELECT 1"))

        await db.read(select_one)

    return Dependency("database", check, tuple(services))


def chroma_dependency(url: str, services: Sequence[str], timeout: float) -> Dependency:
    """A Chroma server's heartbeat (``/api/v2/heartbeat``) at ``url`` (http:// or https://)."""
    heartbeat = f"{url.rstrip('/')}/api/v2/heartbeat"

    async def check() -> None:
        async with httpx.AsyncClient(timeout=timeout) as client:
            (await client.get(heartbeat)).raise_for_status()

    return Dependency("vector index", check, tuple(services))


class DependencyMonitor:
    """Sets the health of each dependency's services from its checks, every ``interval`` seconds."""

    def __init__(
        self,
        health: Any,
        dependencies: Sequence[Dependency],
        interval: float,
        down: set[str] | None = None,
    ) -> None:
        self.health = health
        self.dependencies = list(dependencies)
        self.interval = interval
        #: Dependencies known to be down (their services' health NOT_SERVING), e.g. one still loading.
        self.down: set[str] = set(down or ())

    async def check_once(self) -> set[str]:
        """Check every dependency once, update the health statuses; the names of those down."""
        results = await asyncio.gather(*(self._up(d) for d in self.dependencies))
        down = {d.name for d, up in zip(self.dependencies, results, strict=True) if not up}
        if down != self.down:
            names = {n for d in self.dependencies for n in d.services}
            unready = {n for d in self.dependencies if d.name in down for n in d.services}
            for name in sorted(names):
                await self.health.set(name, NOT_SERVING if name in unready else SERVING)
            (log.warning if down else log.info)(
                "dependencies changed", extra={"down": sorted(down), "not_serving": sorted(unready)}
            )
            self.down = down
        return down

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check_once()

    async def _up(self, dependency: Dependency) -> bool:
        try:
            # A check may not hang past the next round (a database that drops packets).
            await asyncio.wait_for(dependency.check(), timeout=max(self.interval, 1.0))
        except Exception as error:  # any failure means "down"; the log says which
            if dependency.name not in self.down:
                log.warning("dependency down", extra={"dependency": dependency.name, "error": str(error)})
            return False
        return True
