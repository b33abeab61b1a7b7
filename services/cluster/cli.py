"""``sessionkit cluster up|status|down``: the deploy/k8s topology as local processes (``make cluster``)."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sessionkit_server.cluster import netns
from sessionkit_server.cluster.processes import (
    SERVING,
    Cluster,
    ClusterError,
    load_record,
    load_running,
    statuses,
    stop_all,
)
from sessionkit_server.cluster.topology import NetnsPlan, plan

DEFAULT_RUN_DIR = Path(".sessionkit-cluster")
DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1:5432/sessionkit_cluster"
out = Console()
err = Console(stderr=True)
cluster_app = typer.Typer(
    help="The deploy/k8s topology on this machine: replicas of each service as processes on "
    "127.0.0.2, .3, ..., the gateway in front, on PostgreSQL and a Chroma server.",
    no_args_is_help=True,
)

RunDir = Annotated[Path, typer.Option(help="Directory of the run's pids, logs and data")]


def register(app: typer.Typer) -> None:
    app.add_typer(cluster_app, name="cluster")


@cluster_app.command()
def up(
    replicas: Annotated[int, typer.Option(help="Replicas of each gRPC service")] = 3,
    base_port: Annotated[
        int, typer.Option(help="gRPC port of state; memory, knowledge and agent take the next ones")
    ] = 50051,
    http_host: Annotated[str, typer.Option(help="Interface of the gateway")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="Port of the gateway")] = 8080,
    database_url: Annotated[
        str, typer.Option(help="PostgreSQL URL (the database is created when missing)")
    ] = DEFAULT_DATABASE,
    vector_url: Annotated[
        str, typer.Option(help="A Chroma server's URL (default: start one, `chroma run`)")
    ] = "",
    chroma_port: Annotated[int, typer.Option(help="Port of the Chroma server the command starts")] = 8000,
    llm_base_url: Annotated[
        str, typer.Option(help="OpenAI-compatible endpoint of the agent (default: the offline model)")
    ] = "",
    llm_api_key: Annotated[
        str, typer.Option(help="Its key (the manifests' Secret)", envvar="OPENAI_API_KEY", show_default=False)
    ] = "",
    api_keys: Annotated[
        str,
        typer.Option(
            help='API keys of the services (the manifests\' Secret), JSON {"<key>": "<tenant>"}; with '
            "--netns, where the services listen off loopback and so need keys, one is made when unset",
            show_default=False,
        ),
    ] = "",
    use_netns: Annotated[
        bool,
        typer.Option(
            "--netns",
            help="Each service in its own network namespace on --subnet (needs root and `ip`; "
            "skipped, saying why, where namespaces cannot be made)",
        ),
    ] = False,
    subnet: Annotated[
        str, typer.Option(help="Subnet of --netns (created, and removed by down)")
    ] = "10.77.0.0/24",
    run_dir: RunDir = DEFAULT_RUN_DIR,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every replica to be SERVING")] = 600.0,
) -> None:
    """Start the topology, detached; returns once every replica is SERVING."""
    if use_netns:
        reason = netns.unavailable()
        if reason is not None:
            out.print(f"skipped --netns: {escape(reason)}", highlight=False)
            return
    made_key = ""
    if use_netns and not api_keys:
        made_key = secrets.token_hex(24)
        api_keys = json.dumps({made_key: "*"})
    try:
        topology = plan(
            run_dir=run_dir.resolve(),
            database_url=database_url,
            replicas=replicas,
            base_port=base_port,
            http_host=http_host,
            http_port=http_port,
            vector_url=vector_url,
            chroma_port=chroma_port,
            secrets={"llm-api-key": llm_api_key, "api-keys": api_keys},
            netns_subnet=subnet if use_netns else None,
            llm_base_url=llm_base_url,
        )
    except ValueError as error:
        err.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        raise typer.Exit(2) from None
    cluster = Cluster(topology)
    try:
        cluster.up(timeout, progress=lambda line: out.print(escape(line), highlight=False))
    except (ClusterError, netns.NetnsUnavailable) as error:
        err.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        raise typer.Exit(1) from None
    _print_table(run_dir)
    if made_key:
        key_file = topology.run_dir / "api-key"
        key_file.touch(mode=0o600)
        key_file.write_text(made_key + "\n")
        out.print(f"API key (every tenant): in {key_file}", highlight=False)
    out.print(
        f"gateway: http://{topology.gateway.address}  state: {topology.target('state')}\n"
        f"logs: {topology.run_dir}/*/output.log; stop with `sessionkit cluster down --run-dir {run_dir}`",
        highlight=False,
        soft_wrap=True,
    )


@cluster_app.command()
def status(run_dir: RunDir = DEFAULT_RUN_DIR) -> None:
    """Each process's address, pid and health; exits 1 unless every one is SERVING."""
    if not _print_table(run_dir):
        raise typer.Exit(1)


@cluster_app.command()
def down(
    run_dir: RunDir = DEFAULT_RUN_DIR,
    timeout: Annotated[float, typer.Option(help="Seconds each process may drain before SIGKILL")] = 30.0,
) -> None:
    """Stop every process (SIGTERM, then SIGKILL after --timeout) and remove --netns's namespaces."""
    try:
        record = load_record(run_dir)
        entries = load_running(run_dir)
        stop_all(entries, timeout)
    except ClusterError as error:
        err.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        raise typer.Exit(1) from None
    plan_ = record.get("netns")
    if isinstance(plan_, dict):
        netns.teardown(NetnsPlan(**plan_))
    (run_dir / "cluster.json").unlink(missing_ok=True)
    out.print(f"stopped {len(entries)} processes" if entries else f"nothing runs from {run_dir}")


def _print_table(run_dir: Path) -> bool:
    """Print the run's table; whether every process is SERVING."""
    try:
        entries = load_running(run_dir)
    except ClusterError as error:
        err.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        return False
    if not entries:
        out.print(f"nothing runs from {run_dir}")
        return False
    table = Table("process", "address", "pid", "health", "netns")
    found = statuses(entries)
    for s in found:
        style = "green" if s.health == SERVING else "red"
        table.add_row(s.name, s.address, str(s.pid), f"[{style}]{s.health}[/{style}]", s.netns or "")
    out.print(table)
    return all(s.health == SERVING for s in found)
