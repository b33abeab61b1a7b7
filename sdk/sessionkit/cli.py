"""The ``sessionkit`` command line: run the services, look at sessions and their state.

Errors print one line (``error: ...``) and exit with status 1; never a traceback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from sessionkit.cli_agent import agent_app
from sessionkit.config import ClientSettings
from sessionkit.errors import InvalidArgument, SessionKitError
from sessionkit.ids import DEFAULT
from sessionkit.knowledge_client import KnowledgeClient
from sessionkit.memory_client import MemoryClient
from sessionkit.retry import RetryPolicy
from sessionkit.state_client import SessionRef, StateClient
from sessionkit.transport import Transport, close_channels

T = TypeVar("T")
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


def _register_plugins() -> None:
    """Commands contributed by installed packages (entry point group ``sessionkit.cli``): the server
    package adds ``serve``. Without it, ``serve`` says what to install."""
    names = set()
    for entry in entry_points(group="sessionkit.cli"):
        entry.load()(app)
        names.add(entry.name)
    if "serve" not in names:

        @app.command(
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
            add_help_option=False,
        )
        def serve() -> None:
            """Run the services (needs the server package: pip install 'sessionkit-server[all]')."""
            err.print(
                "[red]error:[/red] `sessionkit serve` needs the server package, which is not installed: "
                # \[ : a literal bracket; rich would take [all] for markup and print nothing.
                "pip install 'sessionkit-server\\[all]' (or one extra per service: state, memory, "
                "knowledge, agent, gateway)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(2)


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
    """Add a file (uploaded), a URL (fetched by the service), text, or a folder (every file in it, as
    one batch), with a progress bar."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from sessionkit.knowledge_batch import add_batch, batch_files, is_batch

    client = _knowledge_client(address, storage_path)
    ref = SessionRef(_app(app_name), user, session_id)
    if is_batch(source):

        async def checked() -> list[tuple[Path, str]]:  # through _run: a refusal prints "error: ..."
            if name:
                raise InvalidArgument("--name applies to one source, not to a folder")
            return batch_files(source)

        files = _run(checked())
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} files"),
            console=err, transient=True,
        ) as bar:  # fmt: skip
            task = bar.add_task("adding", total=len(files))

            async def add_one(path: Path, file_name: str) -> dict[str, Any]:
                return await client.add(
                    ref, path, scope=scope, collection=collection, name=file_name, force=force
                )

            batch = _run(add_batch(files, add_one, lambda p: bar.update(task, completed=p["files_done"])))
        counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(batch["outcomes"].items()))
        out.print(
            f"{batch['files']} files from {source!r}: {counts}; {batch['chunks_added']} chunks added",
            highlight=False,
            soft_wrap=True,
        )
        return
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
    _register_plugins()
    app()


if __name__ == "__main__":
    main()
