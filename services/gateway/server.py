"""The gateway's HTTP server: uvicorn on the caller's event loop (``sessionkit serve`` runs it next to
the gRPC server in one process), on a socket bound here so a port in use fails at start with a clear
error and port 0 reports the port it got."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from sessionkit.config import ClientSettings
from sessionkit_server.common.auth import check_binding
from sessionkit_server.common.config import ServerSettings
from sessionkit_server.gateway.app import create_app
from sessionkit_server.gateway.http_protocol import with_header_timeout
from sessionkit_server.gateway.upstream import Upstream

log = logging.getLogger("sessionkit.gateway")


class _Server(uvicorn.Server):
    """uvicorn without its signal handling: the process's owner (the CLI, a test) decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def local_client_settings(target: str) -> ClientSettings:
    """Every service at ``target`` (explicit, so no SESSIONKIT_*_ADDRESS of the environment applies)."""
    return ClientSettings(
        address=target, state_address="", memory_address="", knowledge_address="", agent_address=""
    )


class GatewayServer:
    """Start with :meth:`start` (returns the bound port), stop with :meth:`stop`."""

    def __init__(self, settings: ServerSettings, upstream: Upstream) -> None:
        self.settings = settings
        self.upstream = upstream
        self.port = 0
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def for_target(
        cls, settings: ServerSettings, address: str, client_settings: ClientSettings | None = None
    ) -> GatewayServer:
        return cls(settings, Upstream(settings, client_settings or ClientSettings(), address))

    @property
    def scheme(self) -> str:
        return "https" if self.settings.tls_cert_file else "http"

    @property
    def url(self) -> str:
        host = self.settings.http_host
        host = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{host}:{self.port}"

    async def start(self) -> int:
        settings = self.settings
        check_binding(settings.auth_enabled, settings.http_host, "the HTTP gateway")
        family = socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
        # without it every keep-alive response waited ~40 ms (Nagle against the client's delayed ACK).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((settings.http_host, settings.http_port))
        except OSError:
            sock.close()
            raise
        sock.set_inheritable(True)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            create_app(settings, self.upstream),
            log_config=None,  # keep the process's logging (JSON lines)
            access_log=False,
            lifespan="on",
            ssl_certfile=str(settings.tls_cert_file) if settings.tls_cert_file else None,
            ssl_keyfile=str(settings.tls_key_file) if settings.tls_key_file else None,
            timeout_graceful_shutdown=max(1, int(settings.drain_seconds)),
            server_header=False,
            # Slow or silent clients do not keep connections: headers within a deadline, and an idle
            # kept-alive connection closed after its own.
            http=with_header_timeout(settings.http_header_timeout_seconds),
            timeout_keep_alive=max(1, round(settings.http_keep_alive_seconds)),
        )
        server = _Server(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="sessionkit-gateway")
        while not server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("the HTTP gateway stopped during start-up")
            await asyncio.sleep(0.01)
        log.info("gateway serving", extra={"url": self.url, "auth": settings.auth_enabled})
        return self.port

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._server = self._task = None
