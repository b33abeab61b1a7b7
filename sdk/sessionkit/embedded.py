"""The embedded local server: one server process per storage_path, shared by every process using it.

Two processes must never open the same SQLite and vector files, so the first SDK call for a
storage_path starts ``python -m sessionkit_server.local`` (detached), which takes an exclusive lock on
``<storage_path>/server.lock`` and serves on a unix socket; every process (this one included)
connects to that socket. A second server started in a race finds the lock taken and exits. The
server shuts down after ``idle_shutdown`` seconds without calls; the next call starts it again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sessionkit.errors import ServiceUnavailable

_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux
_start_lock = threading.Lock()


def socket_path(storage_path: Path) -> Path:
    """The server's unix socket: inside storage_path when the path is short enough, else in /tmp."""
    inside = storage_path / "server.sock"
    if len(str(inside)) <= _SOCKET_PATH_MAX:
        return inside
    digest = hashlib.sha256(str(storage_path).encode()).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"sessionkit-{os.getuid()}" / f"{digest}.sock"


def _serving(target: str, timeout: float = 1.0) -> bool:
    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


def ensure_local_server(storage_path: str | Path, idle_shutdown: float = 600.0, timeout: float = 60.0) -> str:
    """Return the gRPC target of the local server for ``storage_path``, starting it if needed."""
    root = Path(storage_path).expanduser().resolve()
    sock = socket_path(root)
    target = f"unix:{sock}"
    if sock.exists() and _serving(target):
        return target
    with _start_lock:  # one start attempt at a time per process; other processes race on the file lock
        if sock.exists() and _serving(target):
            return target
        pythonpath = _pythonpath()  # fails first, naming what to install, if there is no server package
        root.mkdir(parents=True, exist_ok=True)
        sock.parent.mkdir(parents=True, exist_ok=True)
        log_path = root / "server.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sessionkit_server.local",
                    "--data-dir",
                    str(root),
                    "--socket",
                    str(sock),
                    "--idle-shutdown",
                    str(idle_shutdown),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # outlives this process; shuts itself down when idle
                env={**os.environ, "PYTHONPATH": pythonpath},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sock.exists() and _serving(target):
                return target
            code = proc.poll()
            if code not in (None, 0):
                raise ServiceUnavailable(
                    f"the local sessionkit server for {root} exited with code {code}; see {log_path}:\n"
                    + _tail(log_path)
                )
            time.sleep(0.05)
        raise ServiceUnavailable(
            f"the local sessionkit server for {root} did not start in {timeout:g}s; see {log_path}"
        )


#: What to install when the embedded mode is used without the server package.
SERVER_MISSING = (
    "the embedded local server needs the server package, which is not installed: "
    "pip install 'sessionkit-server[all]'; or connect to running services with address='host:port' "
    "(SESSIONKIT_ADDRESS) or agent_url=..."
)


def _server_root() -> Path:
    """Where the server package lives, found without importing it (the SDK runs no server code; the
    child process does)."""
    spec = importlib.util.find_spec("sessionkit_server")
    if spec is None or spec.origin is None:
        raise ServiceUnavailable(SERVER_MISSING)
    return Path(spec.origin).parent.parent


def _pythonpath() -> str:
    # The child must import the same sessionkit and sessionkit_server packages as this process.
    import sessionkit

    paths = [str(Path(sessionkit.__file__).parent.parent), str(_server_root())]
    existing = os.environ.get("PYTHONPATH")
    return os.pathsep.join([*dict.fromkeys(paths), *([existing] if existing else [])])


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
