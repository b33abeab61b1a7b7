"""``sessionkit serve``: the server package's command, added to the SDK's ``sessionkit`` CLI through the
``sessionkit.cli`` entry point. Runs the services in one process on one gRPC port, and the HTTP gateway.
"""

from __future__ import annotations

import asyncio
import errno
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from sessionkit.embedded import socket_path
from sessionkit.errors import SessionKitError
from sessionkit.transport import close_channels
from sessionkit_server.agent.offline_llm import require_offline_model
from sessionkit_server.common import event_loop
from sessionkit_server.common.extras import missing_modules, require_extra

if TYPE_CHECKING:
    from sessionkit_server.common.config import ServerSettings

#: The services `--service` may name.
SERVICES = ("state", "memory", "knowledge", "agent")
err = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command()(serve)


def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="gRPC port (default 50051; 0 picks a free one)")] = None,
    service: Annotated[
        list[str] | None,
        typer.Option(
            "--service",
            help="Run only this service (repeatable): state, memory, knowledge, agent, gateway. "
            "'--service gateway' alone runs the HTTP gateway in front of --address",
        ),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (default .sessionkit)")] = None,
    database_url: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL, e.g. postgresql://user@host/db (default: SQLite in data dir)"),
    ] = None,
    http_host: Annotated[
        str | None, typer.Option(help="Interface of the HTTP gateway (default 127.0.0.1)")
    ] = None,
    http_port: Annotated[
        int | None,
        typer.Option(help="Port of the HTTP gateway (default 8080, SESSIONKIT_HTTP_PORT; 0 = no gateway)"),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            "-a",
            help="With --service gateway alone: gRPC target of the services it calls (host:port, "
            "dns:///name:port or IP:port,IP:port)",
        ),
    ] = None,
) -> None:
    """Run the services in one process on one gRPC port (every service unless --service is given), and
    the HTTP gateway (docs/GATEWAY.md) on --http-port in the same process."""
    from pydantic import ValidationError

    from sessionkit_server.common import logs, storage_lock
    from sessionkit_server.common.auth import check_binding, server_interceptors
    from sessionkit_server.common.config import ServerSettings
    from sessionkit_server.server import create_server

    requested = list(service or ())
    grpc_services = [s for s in requested if s != "gateway"]
    gateway_only = bool(requested) and not grpc_services
    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "host": host,
            "port": port,
            "data_dir": data_dir,
            "database_url": database_url,
            "http_host": http_host,
            "http_port": http_port,
            "upstream_address": address,
        }.items()
        if v is not None
    }
    if grpc_services:
        overrides["services"] = grpc_services
    try:
        settings = ServerSettings(**overrides)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        err.print(f"[red]error:[/red] invalid settings: {problems}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    # gRPC takes the port modulo 65536 (70000 would serve on 4464) and a negative one means "no TCP
    # port" (the embedded server's unix-socket-only mode), so check the range here.
    if not 0 <= settings.port <= 65535:
        err.print(
            f"[red]error:[/red] invalid settings: port: {settings.port} is not a TCP port "
            "(0-65535; 0 picks a free one)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2)
    missing = sorted(set(grpc_services) - set(SERVICES))
    if missing:
        err.print(
            f"[red]error:[/red] unknown service: {', '.join(missing)} "
            f"(available: {', '.join(sorted(set(SERVICES) | {'gateway'}))})",
            highlight=False,
        )
        raise typer.Exit(2)
    wanted: list[str] = [*settings.services] if not gateway_only else []
    # The default gateway is a convenience: without its extra, serve gRPC alone and say so.
    default_gateway = settings.http_port and "http_port" not in settings.model_fields_set
    if default_gateway and not gateway_only and missing_modules("gateway"):
        err.print(
            # \[ : a literal bracket; rich would take [gateway] for markup and print nothing.
            "note: no HTTP gateway (pip install 'sessionkit-server\\[gateway]' to add it)",
            highlight=False,
        )
        settings.http_port = 0
    if settings.http_port or gateway_only:
        wanted.append("gateway")
    for extra in wanted:
        try:
            require_extra(extra)
        except SessionKitError as error:
            # escape(): the message names 'sessionkit-server[extra]', which rich would take for markup.
            err.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
    if "agent" in wanted and not settings.llm_configured:
        # No endpoint: the offline model answers turns. Without it the other services are still worth
        # serving, so say now what a turn will fail with rather than refusing to start.
        try:
            require_offline_model()
        except SessionKitError as error:
            err.print(f"note: agent turns will fail: {error}", highlight=False, soft_wrap=True)
    if gateway_only:
        _serve_gateway_alone(settings)
        return
    logs.configure(settings.log_level, settings.log_format)
    lock = None
    if settings.read_only and not settings.database_url and _needs_writable_index(settings):
        err.print(
            "[red]error:[/red] SESSIONKIT_READ_ONLY serves the state and agent services only: memory and "
            "knowledge keep their embedded vector index in the data directory (serve them with "
            "SESSIONKIT_VECTOR_URL, or --service state)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)
    if not settings.database_url:
        # Serving a SQLite data directory: be its one server, and answer on its unix socket too,
        # so an SDK with that directory as storage_path uses this server instead of starting one.
        try:
            if not settings.read_only:
                lock = storage_lock.acquire(settings.data_dir.resolve())
        except storage_lock.StorageBusy as error:
            err.print(f"[red]error:[/red] {error}; stop it or use another --data-dir", highlight=False)
            raise typer.Exit(1) from None
        except OSError as error:  # a read-only or full mount, no permission: one line, no traceback
            database = settings.data_dir / "sessionkit.db"
            if (
                error.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
                and database.is_file()
                and not _needs_writable_index(settings)
            ):
                # Data on read-only storage (a mount gone read-only, a snapshot): serve what it holds.
                settings.read_only = True
                err.print(
                    f"note: the data directory {settings.data_dir} is read-only "
                    f"({error.strerror or error}): serving reads; writes answer STORAGE_READ_ONLY",
                    highlight=False,
                    soft_wrap=True,
                )
            else:
                err.print(
                    f"[red]error:[/red] cannot write the data directory {settings.data_dir}: "
                    f"{error.strerror or error}; the server keeps its SQLite database and index there "
                    "(use a writable --data-dir, or SESSIONKIT_DATABASE_URL; a read-only one holding a "
                    "database is served read-only with --service state)",
                    highlight=False,
                    soft_wrap=True,
                )
                raise typer.Exit(1) from None
        if not settings.read_only:  # a read-only directory can hold no socket: TCP only
            settings.unix_socket = socket_path(settings.data_dir.resolve())
            storage_lock.remove_stale_socket(settings.unix_socket)

    async def main() -> None:
        check_binding(settings.auth_enabled, settings.host, "the gRPC services")
        server, bound = await create_server(settings, server_interceptors(settings.api_keys))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if settings.idle_shutdown_seconds > 0:
            server.tasks.append(asyncio.create_task(server._idle_watch(settings.idle_shutdown_seconds, stop)))
        await server.start()
        gateway = None
        try:
            if settings.http_port:
                # Imported only here: the gateway's web stack is an extra a gRPC-only install lacks.
                from sessionkit_server.gateway.server import GatewayServer, local_client_settings

                gateway = await _start_local_gateway(settings, bound, GatewayServer, local_client_settings)
            where = f"; HTTP gateway on {gateway.url}" if gateway else ""
            err.print(
                f"sessionkit serving {', '.join(settings.services)} on {settings.host}:{bound}{where}",
                highlight=False,
                soft_wrap=True,
            )
            await stop.wait()
        finally:
            # Both drain at once, so stopping takes at most the drain time.
            await asyncio.gather(server.stop(), gateway.stop() if gateway else asyncio.sleep(0))
            await close_channels()

    try:
        event_loop.run(main(), settings.event_loop)
    except (OSError, RuntimeError) as error:  # grpc raises RuntimeError("Failed to bind to address ...")
        err.print(
            f"[red]error:[/red] cannot serve on {settings.host}:{settings.port}: {error}", highlight=False
        )
        raise typer.Exit(1) from None
    except SessionKitError as error:
        err.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(1) from None
    finally:
        if settings.unix_socket is not None:
            settings.unix_socket.unlink(missing_ok=True)
        if lock is not None:
            lock.close()


async def _start_local_gateway(
    settings: Any, grpc_port: int, gateway_class: Any, client_settings: Any
) -> Any:
    """The gateway in front of this process's own gRPC server: over its unix socket when it has one
    (no TLS needed on a local socket), else over loopback TCP. A busy *default* port (8080, nothing
    configured) only skips the gateway with a warning, so a second `serve` on another data directory
    still runs; a port asked for explicitly must be free."""
    if settings.unix_socket is not None:
        target = f"unix:{settings.unix_socket}"
    else:
        loopback = "127.0.0.1" if settings.host in ("0.0.0.0", "", "localhost") else settings.host
        loopback = "[::1]" if loopback == "::" else loopback
        target = f"{loopback}:{grpc_port}"
        if settings.tls_cert_file is not None and settings.tls_ca_file is None:
            settings = settings.model_copy(update={"tls_ca_file": settings.tls_cert_file})
    gateway = gateway_class.for_target(settings, target, client_settings(target))
    try:
        await gateway.start()
    except OSError as error:
        if "http_port" in settings.model_fields_set:
            raise OSError(f"HTTP gateway port {settings.http_host}:{settings.http_port}: {error}") from None
        err.print(
            f"warning: HTTP gateway not started: {settings.http_host}:{settings.http_port} is in use "
            "(set --http-port or SESSIONKIT_HTTP_PORT; 0 = no gateway)",
            highlight=False,
            soft_wrap=True,
        )
        return None
    return gateway


def _serve_gateway_alone(settings: Any) -> None:
    """`sessionkit serve --service gateway --address host:port`: the HTTP gateway in front of remote
    services (SESSIONKIT_STATE_ADDRESS etc. may place each service elsewhere)."""
    from sessionkit_server.common import logs
    from sessionkit_server.gateway.server import GatewayServer

    logs.configure(settings.log_level, settings.log_format)
    client_settings = settings.upstream_client_settings(settings.upstream_address)
    if client_settings.targets() is None:
        err.print(
            "[red]error:[/red] --service gateway needs the services' address: --address host:port "
            "(or SESSIONKIT_UPSTREAM_ADDRESS, or each service's SESSIONKIT_STATE_ADDRESS, "
            "SESSIONKIT_MEMORY_ADDRESS, SESSIONKIT_KNOWLEDGE_ADDRESS, SESSIONKIT_AGENT_ADDRESS)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2)
    if not settings.http_port:
        err.print("[red]error:[/red] --service gateway needs an --http-port other than 0", highlight=False)
        raise typer.Exit(2)

    async def main() -> None:
        gateway = GatewayServer.for_target(settings, client_settings.address, client_settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await gateway.start()
        err.print(f"sessionkit HTTP gateway on {gateway.url}", highlight=False, soft_wrap=True)
        try:
            await stop.wait()
        finally:
            await gateway.stop()
            await close_channels()

    try:
        event_loop.run(main(), settings.event_loop)
    except OSError as error:
        err.print(
            f"[red]error:[/red] cannot serve the gateway on {settings.http_host}:{settings.http_port}: "
            f"{error}",
            highlight=False,
        )
        raise typer.Exit(1) from None
    except SessionKitError as error:
        err.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(1) from None


def _needs_writable_index(settings: ServerSettings) -> bool:
    """Memory and knowledge with the embedded Chroma keep it in the data directory, which Chroma cannot
    open read-only: they cannot be served from read-only storage (with a Chroma server they can)."""
    return bool({"memory", "knowledge"} & set(settings.services)) and not settings.vector_url
