"""`sessionkit agent ...`: chat with a session's agent from a shell (streamed), list its agents."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sessionkit.errors import SessionKitError
from sessionkit.ids import DEFAULT
from sessionkit.session import Session

agent_app = typer.Typer(help="Chat with a session's agents and list them.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

AddressOpt = Annotated[
    str | None, typer.Option("--address", "-a", help="host:port of the services (default: embedded)")
]
StorageOpt = Annotated[str | None, typer.Option("--storage-path", help="Embedded data directory")]
UserOpt = Annotated[str, typer.Option("--user", "-u", help="User id")]
AppOpt = Annotated[str | None, typer.Option("--app", help="App name")]


def _session(
    session_id: str, user: str, app_name: str | None, address: str | None, path: str | None
) -> Session:
    return Session(session_id, user, address=address, storage_path=path, app_name=app_name, timeout=600)


@agent_app.command("chat")
def agent_chat(
    session_id: str,
    message: str,
    agent: Annotated[
        str, typer.Option("--agent", help="The agent's name (created if missing)")
    ] = "Assistant",
    role: Annotated[str | None, typer.Option(help="Role, when the agent is created")] = None,
    instructions: Annotated[str | None, typer.Option(help="Instructions, when the agent is created")] = None,
    model: Annotated[str | None, typer.Option(help="Model for this turn")] = None,
    stream: Annotated[bool, typer.Option(help="Print the answer as it is generated")] = True,
    user: UserOpt = DEFAULT,
    app_name: AppOpt = None,
    address: AddressOpt = None,
    storage_path: StorageOpt = None,
) -> None:
    """Send MESSAGE to an agent of session SESSION_ID and print its answer."""
    try:
        session = _session(session_id, user, app_name, address, storage_path)
        found = {a.name: a for a in session.agents()}
        bot = found.get(agent)
        if bot is None or role is not None or instructions is not None:
            bot = session.Agent(name=agent, role=role or "Assistant", instructions=instructions)
        options: dict[str, Any] = {"model": model} if model else {}
        if stream:
            for piece in bot.stream(message, **options):
                out.print(piece, end="", highlight=False, markup=False, soft_wrap=True)
            out.print()
        else:
            out.print(bot.chat(message, **options), highlight=False, markup=False, soft_wrap=True)
        meta = bot.last_metadata
        usage = meta.get("usage", {})
        err.print(
            f"[dim]{meta.get('model')} · {usage.get('total_tokens', 0)} tokens · "
            f"{meta.get('latency', {}).get('total_ms', 0):.0f} ms[/dim]"
        )
    except SessionKitError as error:
        err.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


@agent_app.command("ls")
def agent_ls(
    session_id: str,
    user: UserOpt = DEFAULT,
    app_name: AppOpt = None,
    address: AddressOpt = None,
    storage_path: StorageOpt = None,
) -> None:
    """List the agents stored with a session."""
    try:
        agents = _session(session_id, user, app_name, address, storage_path).agents()
    except SessionKitError as error:
        err.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    table = Table("name", "role", "model", "tools")
    for a in agents:
        d = a.definition or {}
        table.add_row(
            a.name, a.role, d.get("model") or "(default)", ", ".join(t["name"] for t in d.get("tools", []))
        )
    out.print(table)
