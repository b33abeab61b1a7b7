"""The ``sessionkit`` command line: run the services, look at sessions and their state.

Errors print one line (``error: ...``) and exit with status 1; never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from sessionkit.cli_agent import agent_app
from sessionkit.config import ClientSettings
from sessionkit.embedded import socket_path
from sessionkit.errors import SessionKitError
from sessionkit.ids import DEFAULT
from sessionkit.knowledge_client import KnowledgeClient
from sessionkit.memory_client import MemoryClient
from sessionkit.retry import RetryPolicy
from sessionkit.state_client import SessionRef, StateClient
from sessionkit.transport import Transport, close_channels

T = TypeVar("T")
#: Services this version implements; the others' contracts exist and their RPCs answer UNIMPLEMENTED.
IMPLEMENTED_SERVICES = {"state", "memory", "knowledge", "agent"}
#: services.server.create_server serves TLS on TCP when SESSIONKIT_TLS_CERT_FILE is set: the in-process
#: gateway then trusts that certificate.
GRPC_SERVES_TLS = True
app = typer.Typer(
    help="sessionkit: stateful sessions for AI agents.", no_args_is_help=True, add_completion=False
)
sessions_app = typer.Typer(help="List, show and delete sessions.", no_args_is_help=True)
state_app = typer.Typer(help="Read and write session state.", no_args_is_help=True)
app.add_typer(sessions_app, name="sessions")
app.add_typer(state_app, name="state")
memory_app = typer.Typer(help="Search, list and reindex memories.", no_args_is_help=True)
app.add_typer(memory_app, name="memory")
knowledge_app = typer.Typer(
    help="Add, search, list, delete and reindex knowledge sources.", no_args_is_help=True
)
app.add_typer(knowledge_app, name="knowledge")
app.add_typer(agent_app, name="agent")
out = Console()
err = Console(stderr=True)

AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        "-a",
        help="host:port of the services (default: SESSIONKIT_ADDRESS, "
        "else the embedded local server of --storage-path)",
    ),
]
StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage-path", help="Embedded data directory (default: SESSIONKIT_STORAGE_PATH or .sessionkit)"
    ),
]
UserOpt = Annotated[str, typer.Option("--user", "-u", help="User id")]
AppOpt = Annotated[
    str | None, typer.Option("--app", help="App name (default: SESSIONKIT_APP_NAME or 'default')")
]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    async def main() -> T:
        try:
            return await coro
        finally:
            await close_channels()

    try:
        return asyncio.run(main())
    except SessionKitError as error:
        err.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _client(address: str | None, storage_path: str | None, timeout: float = 30) -> StateClient:
    settings = ClientSettings()
    path = Path(storage_path or settings.storage_path)
    return StateClient(Transport(settings, address, path, RetryPolicy(deadline=timeout)))


def _app(app_name: str | None) -> str:
    return app_name or ClientSettings().app_name


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


@app.command()
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
            "--address", "-a", help="With --service gateway alone: host:port of the services it calls"
        ),
    ] = None,
) -> None:
    """Run the services in one process on one gRPC port (every service unless --service is given), and
    the HTTP gateway (docs/GATEWAY.md) on --http-port in the same process."""
    from pydantic import ValidationError

    from services.common import logs, storage_lock
    from services.common.auth import check_binding, server_interceptors
    from services.common.config import ServerSettings
    from services.gateway.server import GatewayServer, local_client_settings
    from services.server import create_server

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
    missing = sorted(set(grpc_services) - IMPLEMENTED_SERVICES)
    if missing:
        err.print(
            f"[red]error:[/red] not implemented in this version: {', '.join(missing)} "
            f"(available: {', '.join(sorted(IMPLEMENTED_SERVICES | {'gateway'}))})",
            highlight=False,
        )
        raise typer.Exit(2)
    if gateway_only:
        _serve_gateway_alone(settings)
        return
    logs.configure(settings.log_level, settings.log_format)
    lock = None
    if not settings.database_url:
        # Serving a SQLite data directory: be its one server, and answer on its unix socket too,
        # so an SDK with that directory as storage_path uses this server instead of starting one.
        try:
            lock = storage_lock.acquire(settings.data_dir.resolve())
        except storage_lock.StorageBusy as error:
            err.print(f"[red]error:[/red] {error}; stop it or use another --data-dir", highlight=False)
            raise typer.Exit(1) from None
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
        asyncio.run(main())
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
        if not GRPC_SERVES_TLS:
            settings = settings.model_copy(update={"tls_ca_file": None})
        elif settings.tls_cert_file is not None and settings.tls_ca_file is None:
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
    from services.common import logs
    from services.gateway.server import GatewayServer

    logs.configure(settings.log_level, settings.log_format)
    client_settings = ClientSettings()
    if client_settings.targets(settings.upstream_address or None) is None:
        err.print(
            "[red]error:[/red] --service gateway needs the services' address: --address host:port "
            "(or SESSIONKIT_UPSTREAM_ADDRESS)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2)
    if not settings.http_port:
        err.print("[red]error:[/red] --service gateway needs an --http-port other than 0", highlight=False)
        raise typer.Exit(2)

    async def main() -> None:
        gateway = GatewayServer.for_target(settings, settings.upstream_address, client_settings)
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
        asyncio.run(main())
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


@sessions_app.command("ls")
def sessions_ls(
    user: UserOpt = DEFAULT,
    app_name: AppOpt = None,
    address: AddressOpt = None,
    storage_path: StorageOpt = None,
) -> None:
    """List a user's sessions."""
    client = _client(address, storage_path)

    async def main() -> list[Any]:
        return [info async for info in client.iter_sessions(_app(app_name), user)]

    infos = _run(main())
    table = Table("session_id", "version", "events", "updated", "expires")
    for info in infos:
        table.add_row(
            info.session_id,
            str(info.version),
            str(info.event_count),
            info.update_time.isoformat(timespec="seconds") if info.update_time else "",
            info.expire_time.isoformat(timespec="seconds") if info.expire_time else "never",
        )
    out.print(table)
    out.print(f"{len(infos)} session(s) of user {user!r}", highlight=False)


@sessions_app.command("show")
def sessions_show(
    session_id: str,
    user: UserOpt = DEFAULT,
    app_name: AppOpt = None,
    events: Annotated[int, typer.Option(help="How many recent events to show")] = 10,
    address: AddressOpt = None,
    storage_path: StorageOpt = None,
) -> None:
    """Show one session: metadata, state and recent events."""
    client = _client(address, storage_path)
    ref = SessionRef(_app(app_name), user, session_id)

    async def main() -> tuple[Any, Any, Any]:
        info = await client.get_session(ref)
        state, _ = await client.get_state(ref)
        recent, _ = await client.list_events(ref, tail=events) if events > 0 else ([], "")
        return info, state, recent

    info, state, recent = _run(main())
    out.print(f"[bold]{info.session_id}[/bold] (user {info.user_id}, app {info.app_name})", highlight=False)
    out.print(
        f"version {info.version}, {info.event_count} events, updated {info.update_time}", highlight=False
    )
    out.print_json(_json(state))
    for event in recent:
        out.print(f"[dim]{event.id}[/dim] [cyan]{event.role}[/cyan] {event.content}", highlight=False)


@sessions_app.command("rm")
def sessions_rm(
    session_id: str,
    user: UserOpt = DEFAULT,
    app_name: AppOpt = None,
    address: AddressOpt = None,
    storage_path: StorageOpt = None,
) -> None:
    """Delete a session with its state, events and history."""
    client = _client(address, storage_path)
    _run(client.delete_session(SessionRef(_app(app_name), user, session_id)))
    out.print(f"deleted session {session_id!r} of user {user!r}", highlight=False)


@state_app.command("get")
def state_get(
    session_id: str,
    key: Annotated[str | None, typer.Argument(help="One key (default: the whole state)")] = None,
    user: UserOpt = DEFAULT,
    app_name: AppOpt = None,
    address: AddressOpt = None,
    storage_path: StorageOpt = None,
) -> None:
    """Print a session's state (merged with its user: and app: keys), or one key of it, as JSON."""
    client = _client(address, storage_path)
    ref = SessionRef(_app(app_name), user, session_id)
    state, _ = _run(client.get_state(ref, [key] if key else None))
    if key is not None and key not in state:
        err.print(f"[red]error:[/red] key {key!r} is not set in session {session_id!r}", highlight=False)
        raise typer.Exit(1)
    print(_json(state[key] if key is not None else state))


@state_app.command("set")
def state_set(
    session_id: str,
    key: str,
    value: Annotated[str, typer.Argument(help="A JSON value (a bare word is taken as a string)")],
    user: UserOpt = DEFAULT,
    app_name: AppOpt = None,
    address: AddressOpt = None,
    storage_path: StorageOpt = None,
) -> None:
    """Set one key (creating the session if needed)."""
    try:
        parsed: Any = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    client = _client(address, storage_path)
    ref = SessionRef(_app(app_name), user, session_id)

    async def main() -> int:
        await client.create_session(ref, get_if_exists=True)
        return await client.set_value(ref, key, parsed)

    version = _run(main())
    out.print(f"{key} = {_json(parsed)} (version {version})", highlight=False)


SessionOpt = Annotated[str, typer.Option("--session", "-s", help="Session (for its short-term memories)")]
TypeOpt = Annotated[str, typer.Option("--type", help="all, short or long")]


def _memory_client(address: str | None, storage_path: str | None, timeout: float = 300) -> MemoryClient:
    return MemoryClient(_client(address, storage_path, timeout).transport)


@memory_app.command("search")
def memory_search(
    query: str,
    session_id: SessionOpt = "cli",
    user: UserOpt = DEFAULT,
    app_name: AppOpt = None,
    memory_type: TypeOpt = "all",
    limit: int = 5,
    address: AddressOpt = None,
    storage_path: StorageOpt = None,
) -> None:
    """Search a user's memories (hybrid: semantic and lexical)."""
    client = _memory_client(address, storage_path, 60)
    hits = _run(client.search(SessionRef(_app(app_name), user, session_id), query, memory_type, limit))
    table = Table("score", "type", "quality", "text", "id")
    for hit in hits:
        quality = f"{hit['quality_score']:.2f}"
        table.add_row(f"{hit['score']:.3f}", hit["memory_type"], quality, hit["text"], hit["id"])
    out.print(table)


@memory_app.command("ls")
def memory_ls(
    session_id: SessionOpt = "cli",
    user: UserOpt = DEFAULT,
    app_name: AppOpt = None,
    memory_type: TypeOpt = "all",
    address: AddressOpt = None,
    storage_path: StorageOpt = None,
) -> None:
    """List a user's memories."""
    client = _memory_client(address, storage_path, 60)
    memories = _run(client.list_all(SessionRef(_app(app_name), user, session_id), memory_type))
    table = Table("type", "quality", "text", "id")
    for memory in memories:
        table.add_row(memory["memory_type"], f"{memory['quality_score']:.2f}", memory["text"], memory["id"])
    out.print(table)
    out.print(f"{len(memories)} memories", highlight=False)


@memory_app.command("reindex")
def memory_reindex(
    app_name: AppOpt = None,
    all_apps: Annotated[bool, typer.Option("--all-apps", help="Every app, not just one")] = False,
    address: AddressOpt = None,
    storage_path: StorageOpt = None,
) -> None:
    """Rebuild the vector index from the memory rows (the source of truth)."""
    client = _memory_client(address, storage_path)
    scanned, written = _run(client.reindex(_app(app_name), all_apps))
    out.print(f"reindexed: {scanned} memories scanned, {written} vectors written", highlight=False)


KSessionOpt = Annotated[str, typer.Option("--session", "-s", help="Session the knowledge belongs to")]
ScopeOpt = Annotated[str, typer.Option("--scope", help="session, user or collection")]


def _knowledge_client(address: str | None, storage_path: str | None, timeout: float = 600) -> KnowledgeClient:
    return KnowledgeClient(_client(address, storage_path, timeout).transport)


@knowledge_app.command("add")
def knowledge_add(
    source: str,
    session_id: KSessionOpt = "cli",
    user: UserOpt = DEFAULT,
    app_name: AppOpt = None,
    scope: ScopeOpt = "session",
    collection: Annotated[str, typer.Option("--collection", help="With --scope collection")] = "",
    name: Annotated[str, typer.Option("--name", help="The source's name (default: from the source)")] = "",
    force: Annotated[bool, typer.Option("--force", help="Re-ingest even when unchanged")] = False,
    address: AddressOpt = None,
    storage_path: StorageOpt = None,
) -> None:
    """Add a file (uploaded), a URL (fetched by the service) or text, with a progress bar."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    client = _knowledge_client(address, storage_path)
    ref = SessionRef(_app(app_name), user, session_id)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TextColumn("{task.fields[chunks]}"),
        console=err, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("starting", total=None, chunks="")

        def on_progress(p: dict[str, Any]) -> None:
            chunks = ""
            if p["chunks_total"]:
                chunks = f"chunks {p['chunks_embedded']}/{p['chunks_total']} embedded"
            bar.update(
                task,
                description=p["stage"],
                completed=p["bytes_read"],
                total=p["bytes_total"] or None,
                chunks=chunks,
            )

        result = _run(
            client.add(
                ref,
                source,
                scope=scope,
                collection=collection,
                name=name,
                force=force,
                on_progress=on_progress,
            )
        )
    src = result["source"]
    out.print(
        f"{result['outcome']} {result['kind']} source {src['name']!r} ({src['id']}): "
        f"{src['chunk_count']} chunks, {src['size_bytes']} bytes, {src['content_type']}",
        highlight=False,
        soft_wrap=True,
    )


@knowledge_app.command("search")
def knowledge_search(
    query: str,
    session_id: KSessionOpt = "cli",
    user: UserOpt = DEFAULT,
    app_name: AppOpt = None,
    limit: int = 5,
    address: AddressOpt = None,
    storage_path: StorageOpt = None,
) -> None:
    """Search the session's and the user's knowledge (hybrid: semantic and lexical)."""
    client = _knowledge_client(address, storage_path, 60)
    hits = _run(client.search(SessionRef(_app(app_name), user, session_id), query, limit))
    table = Table("score", "source", "where", "text")
    for hit in hits:
        position = hit["position"]
        where = f"p.{position['page']}" if position["page"] else f"#{position['chunk_index']}"
        if hit["heading_path"]:
            where += " " + " > ".join(hit["heading_path"])
        table.add_row(f"{hit['score']:.3f}", hit["source"]["name"], where, hit["text"])
    out.print(table)


@knowledge_app.command("ls")
def knowledge_ls(
    session_id: KSessionOpt = "cli",
    user: UserOpt = DEFAULT,
    app_name: AppOpt = None,
    address: AddressOpt = None,
    storage_path: StorageOpt = None,
) -> None:
    """List the session's and the user's knowledge sources."""
    client = _knowledge_client(address, storage_path, 60)
    sources = _run(client.list_all(SessionRef(_app(app_name), user, session_id)))
    table = Table("scope", "kind", "name", "chunks", "id")
    for src in sources:
        table.add_row(src["scope"], src["kind"], src["name"], str(src["chunk_count"]), src["id"])
    out.print(table)
    out.print(f"{len(sources)} sources", highlight=False)


@knowledge_app.command("rm")
def knowledge_rm(
    source: str,
    session_id: KSessionOpt = "cli",
    user: UserOpt = DEFAULT,
    app_name: AppOpt = None,
    scope: ScopeOpt = "session",
    address: AddressOpt = None,
    storage_path: StorageOpt = None,
) -> None:
    """Delete one source, by id or name."""
    client = _knowledge_client(address, storage_path, 60)
    removed = _run(
        client.delete(SessionRef(_app(app_name), user, session_id), source, scope, allow_missing=True)
    )
    out.print("no such source" if removed is None else f"deleted ({removed} chunks)", highlight=False)


@knowledge_app.command("reindex")
def knowledge_reindex(
    app_name: AppOpt = None,
    all_apps: Annotated[bool, typer.Option("--all-apps", help="Every app, not just one")] = False,
    address: AddressOpt = None,
    storage_path: StorageOpt = None,
) -> None:
    """Rebuild the knowledge vector index from the chunk rows (the source of truth), e.g. after
    changing the embedding model."""
    client = _knowledge_client(address, storage_path)
    scanned, written = _run(client.reindex(_app(app_name), all_apps))
    out.print(f"reindexed: {scanned} chunks scanned, {written} vectors written", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
