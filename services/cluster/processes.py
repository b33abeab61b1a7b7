"""Starting, checking and stopping a topology's processes. Each runs detached (its own session, its output
in its run directory's log), so ``sessionkit cluster up`` can return while they serve; the run directory's
cluster.json records their pids for ``status`` and ``down`` (and a pid's start time, so a pid the system
has since given to another process is never signalled)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sessionkit_server.cluster import netns
from sessionkit_server.cluster.topology import ARGS, CHROMA, GATEWAY, RELAY, Replica, Topology

STATE_FILE = "cluster.json"
SERVING = "SERVING"


class ClusterError(RuntimeError):
    """The topology could not be started, or a run directory holds no topology."""


@dataclass
class Running:
    """One started process, as cluster.json records it."""

    name: str
    component: str
    address: str
    pid: int
    start_time: int
    log: str
    netns: str | None = None


@dataclass
class Status:
    name: str
    component: str
    address: str
    pid: int
    alive: bool
    health: str
    netns: str | None = None


def command(topology: Topology, replica: Replica) -> list[str]:
    if replica.component == CHROMA:
        chroma = Path(sys.executable).parent / "chroma"
        data = topology.replica_dir(replica) / "data"
        args = [str(chroma), "run", "--path", str(data), "--host", replica.host, "--port", str(replica.port)]
    elif replica.component == RELAY:
        target = topology.relays[replica]
        args = [sys.executable, "-m", "sessionkit_server.cluster.relay", replica.address, target]
    else:
        args = [sys.executable, "-m", "sessionkit.cli", *ARGS[replica.component]]
    return netns.exec_prefix(replica.netns) + args


def process_env(topology: Topology, replica: Replica) -> dict[str, str]:
    """This environment without any SESSIONKIT_* setting of its own, plus the replica's (the manifests')."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONKIT_")}
    env.setdefault("HF_HUB_OFFLINE", "1")
    if replica.component not in (CHROMA, RELAY):
        env.update(topology.environment(replica))
    return env


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None when there is no such live process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # exited (a zombie whose parent has not reaped it yet)
        return None
    return int(fields[19])


def alive(entry: Running) -> bool:
    return _start_time(entry.pid) == entry.start_time


def health(component: str, address: str, timeout: float = 2.0) -> str:
    """SERVING, NOT_SERVING, ... (the gRPC health service's answer; for the gateway its /health, for
    Chroma its heartbeat), or UNREACHABLE."""
    if component in (GATEWAY, CHROMA):
        path = "/health" if component == GATEWAY else "/api/v2/heartbeat"
        try:
            with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout) as reply:
                return SERVING if reply.status == 200 else f"HTTP {reply.status}"
        except urllib.error.HTTPError as error:
            return f"NOT_SERVING (HTTP {error.code})"
        except OSError:
            return "UNREACHABLE"
    if component == RELAY:
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=timeout).close()
            return SERVING
        except OSError:
            return "UNREACHABLE"
    try:
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    except grpc.RpcError:
        return "UNREACHABLE"


class Cluster:
    """A topology's processes. ``up`` starts them all and waits until each is SERVING; ``down`` stops
    them; in between, tests kill and restart single replicas."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.running: dict[str, Running] = {}

    @property
    def state_file(self) -> Path:
        return self.topology.run_dir / STATE_FILE

    def replica(self, name: str) -> Replica:
        for replica in self.topology.processes():
            if replica.name == name:
                return replica
        raise KeyError(name)

    def up(self, timeout: float = 600.0, progress: Callable[[str], None] | None = None) -> None:
        """Start everything and wait until each process is SERVING (the model-loading replicas take a
        while on a busy machine, hence the generous default). Stops what it started if that fails."""
        say = progress or (lambda _line: None)
        previous = load_running(self.topology.run_dir)
        if any(alive(entry) for entry in previous):
            raise ClusterError(
                f"a cluster already runs from {self.topology.run_dir}: `sessionkit cluster down` it first"
            )
        self.topology.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.topology.netns is not None:
                say(f"network namespaces on {self.topology.netns.subnet}")
                netns.setup(self.topology)
            _write_api_keys(self.topology)
            say(f"database {_without_password(self.topology.database_url)}")
            asyncio.run(create_database(self.topology.database_url))
            first = [r for r in self.topology.processes() if r.component in (CHROMA, RELAY)]
            for replica in first:
                self.start(replica)
            self.wait_serving(first, timeout)
            rest = [r for r in self.topology.processes() if r not in first]
            for replica in rest:
                self.start(replica)
            say(f"started {len(rest)} processes; waiting until each is SERVING")
            self.wait_serving(rest, timeout)
        except BaseException:
            self.down()
            raise

    def start(self, replica: Replica) -> Running:
        directory = self.topology.replica_dir(replica)
        directory.mkdir(parents=True, exist_ok=True)
        log_path = directory / "output.log"
        with open(log_path, "ab") as log:
            child = subprocess.Popen(
                command(self.topology, replica),
                env=process_env(self.topology, replica),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=directory,
                # Its own session: it outlives `cluster up`, and a Ctrl-C in that terminal is not its.
                start_new_session=True,
            )
        started = _start_time(child.pid) or 0
        entry = Running(
            replica.name, replica.component, replica.address, child.pid, started, str(log_path), replica.netns
        )
        self.children[replica.name] = child
        self.running[replica.name] = entry
        self._save()
        return entry

    def wait_serving(self, replicas: Iterable[Replica], timeout: float) -> None:
        pending = {r.name: r for r in replicas}
        deadline = time.monotonic() + timeout
        while pending:
            for name, replica in list(pending.items()):
                child = self.children.get(name)
                if child is not None and child.poll() is not None:
                    raise ClusterError(
                        f"{name} exited with {child.returncode}; its log ends:\n{self.log_tail(name)}"
                    )
                if health(replica.component, replica.address) == SERVING:
                    del pending[name]
            if not pending:
                return
            if time.monotonic() > deadline:
                names = ", ".join(sorted(pending))
                raise ClusterError(f"not SERVING after {timeout:.0f} s: {names}")
            time.sleep(0.25)

    def log_tail(self, name: str, chars: int = 3000) -> str:
        entry = self.running.get(name)
        if entry is None:
            return ""
        with contextlib.suppress(OSError):
            return Path(entry.log).read_text(errors="replace")[-chars:]
        return ""

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 30.0) -> None:
        """Signal one process and wait until it is gone (SIGKILL after ``timeout``)."""
        entry = self.running.get(name)
        if entry is None:
            return
        _signal_and_wait([entry], sig, timeout, self.children)
        self.children.pop(name, None)

    def restart(self, name: str, timeout: float = 300.0) -> None:
        replica = self.replica(name)
        self.kill(name, signal.SIGTERM)
        self.start(replica)
        self.wait_serving([replica], timeout)

    def status(self) -> list[Status]:
        return statuses(list(self.running.values()))

    def down(self, timeout: float = 30.0) -> None:
        entries = list(self.running.values()) or load_running(self.topology.run_dir)
        stop_all(entries, timeout, self.children)
        self.children.clear()
        self.running.clear()
        if self.topology.netns is not None:
            netns.teardown(self.topology.netns)
        self.state_file.unlink(missing_ok=True)

    def _save(self) -> None:
        record = {
            "netns": asdict(self.topology.netns) if self.topology.netns else None,
            "processes": [asdict(entry) for entry in self.running.values()],
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(self.state_file)


def _write_api_keys(topology: Topology) -> None:
    """The Secret's api-keys.json (``{}``, auth off, when no keys are given: loopback only)."""
    path = topology.api_keys_file
    path.touch(mode=0o600)
    path.write_text(topology.secrets.get("api-keys") or "{}")


def load_record(run_dir: Path) -> dict[str, object]:
    try:
        record: dict[str, object] = json.loads((run_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return {}
    except ValueError as error:
        raise ClusterError(f"{run_dir / STATE_FILE} is not a cluster record: {error}") from None
    return record


def load_running(run_dir: Path) -> list[Running]:
    entries = load_record(run_dir).get("processes") or []
    assert isinstance(entries, list)
    return [Running(**entry) for entry in entries]


def statuses(entries: list[Running]) -> list[Status]:
    out = []
    for entry in entries:
        up = alive(entry)
        out.append(
            Status(
                entry.name,
                entry.component,
                entry.address,
                entry.pid,
                up,
                health(entry.component, entry.address) if up else "EXITED",
                entry.netns,
            )
        )
    return out


def stop_all(
    entries: list[Running], timeout: float, children: dict[str, subprocess.Popen[bytes]] | None = None
) -> None:
    """SIGTERM every process (they drain at once, in parallel), then SIGKILL what remains after
    ``timeout``. The gateway and the replicas go first, Chroma and relays last, since the services
    still use them while they drain."""
    late = [e for e in entries if e.component in (CHROMA, RELAY)]
    early = [e for e in entries if e not in late]
    for group in (early, late):
        _signal_and_wait(group, signal.SIGTERM, timeout, children or {})


def _signal_and_wait(
    entries: list[Running], sig: int, timeout: float, children: dict[str, subprocess.Popen[bytes]]
) -> None:
    live = [e for e in entries if alive(e)]
    for entry in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(entry.pid, sig)
    deadline = time.monotonic() + timeout
    while True:
        live = [e for e in live if alive(e)]
        if not live:
            # Reap our own children (a zombie holds its exit status, and Popen warns when it is
            # collected unreaped); their exit is already known, so this does not wait.
            for entry in entries:
                child = children.get(entry.name)
                if child is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        child.wait(timeout=5)
            return
        if time.monotonic() > deadline:
            if sig == signal.SIGKILL:
                raise ClusterError(f"still running after SIGKILL: {', '.join(e.name for e in live)}")
            _signal_and_wait(live, signal.SIGKILL, 10.0, children)
            return
        time.sleep(0.1)


async def create_database(url: str) -> None:
    """Create the PostgreSQL database of ``url`` when it does not exist (connecting to the server's
    ``postgres`` database to do so)."""
    import asyncpg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ClusterError(f"database URL {_without_password(url)}: replicas share PostgreSQL, not {parsed}")
    name = parsed.database
    if not name:
        raise ClusterError(f"database URL {_without_password(url)} names no database")
    admin = parsed.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    try:
        conn = await asyncpg.connect(admin, timeout=10)
    except (OSError, asyncpg.PostgresError) as error:
        raise ClusterError(f"PostgreSQL at {_without_password(admin)}: {error}") from None
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def _without_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def calls_started(address: str, timeout: float = 5.0, api_key: str = "") -> int:
    """Calls the gRPC server at ``address`` has started since it began (its channelz counters; the
    channelz call itself included)."""
    from grpc_channelz.v1 import channelz_pb2, channelz_pb2_grpc

    metadata = (("x-api-key", api_key),) if api_key else None
    with grpc.insecure_channel(address) as channel:
        reply = channelz_pb2_grpc.ChannelzStub(channel).GetServers(
            channelz_pb2.GetServersRequest(), timeout=timeout, metadata=metadata
        )
    return sum(int(server.data.calls_started) for server in reply.server)
