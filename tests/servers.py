"""Real servers for tests: a sessionkit gRPC server on its own thread and event loop (so sync and
async tests can both call it), or in a child process (for kill -9 tests)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sessionkit_server.common.config import ServerSettings
from sessionkit_server.server import Host, create_server

ROOT = Path(__file__).resolve().parent.parent


class ServerThread:
    """Runs ``create_server(settings)`` on a private event loop in a daemon thread."""

    def __init__(
        self,
        settings: ServerSettings,
        customize: Callable[[Host], None] | None = None,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        self.settings = settings
        self.customize = customize
        self.interceptors = interceptors
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, daemon=True, name="sessionkit-test-server"
        )
        self.host: Host | None = None
        self.port = 0

    def start(self) -> ServerThread:
        self.thread.start()
        # A loaded machine takes a while to load the embedding model: wait for readiness, not a call.
        self.host, self.port = self.call(self._start(), timeout=600)
        return self

    async def _start(self) -> tuple[Host, int]:
        host, port = await create_server(self.settings, self.interceptors)
        if self.customize:
            self.customize(host)
        await host.start()
        # Ready means the model is loaded too (readiness waits for it): no test's first memory or
        # knowledge call pays for loading it within its deadline.
        await host.models_loaded()
        return host, port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def call(self, coro: Any, timeout: float = 60) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout=timeout)

    def stop(self) -> None:
        if self.host is not None:
            self.call(self.host.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python process running the SDK or the CLI as a user would: this
    checkout importable, and no SESSIONKIT_* setting inherited from the test run (so no address
    unless the test gives one: embedded mode by default)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONKIT_")}
    env["PYTHONPATH"] = f"{ROOT / 'sdk'}{os.pathsep}{ROOT}"
    env.update(extra)
    return env


def wait_serving(target: str, timeout: float = 30.0, child: ChildProcess | None = None) -> None:
    """Until the gRPC health check at ``target`` answers SERVING; with ``child`` (the server's process),
    fails at once, with its log, when that exits instead."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if child is not None and child.returncode is not None:
            raise RuntimeError(f"the server exited with {child.returncode}:\n{child.log()[-3000:]}")
        try:
            with grpc.insecure_channel(target) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as error:
            last = error
        time.sleep(0.05)
    raise TimeoutError(f"server at {target} not SERVING after {timeout}s: {last}")


class ChildProcess:
    """A child process whose stdout and stderr go to a log file, never to a pipe: a pipe that is read
    only after exit fills (64 KiB) and blocks a chatty server in the middle of a write. Every way of
    stopping it also reaps it (a killed child not waited for lingers as a zombie, holding its ports'
    state and its exit code). Usable as a context manager that kills it on the way out."""

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # The child keeps its own copy of the descriptor; ours can close at once.
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                list(args), env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def log(self) -> str:
        """Everything the child has written so far (safe while it runs)."""
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> int:
        """SIGKILL (if still running), then wait for it; its exit code."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait up to ``timeout``; SIGKILL (and wait) if it is still running then."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class ServerProcess:
    """``sessionkit serve --service state`` in a child process; its output in ``data_dir``'s parent,
    ``serve-PORT.log``."""

    def __init__(
        self, port: int, data_dir: Path, database_url: str = "", extra_env: dict[str, str] | None = None
    ):
        self.port = port
        env = dict(os.environ)
        env.update(
            {
                "SESSIONKIT_PORT": str(port),
                "SESSIONKIT_DATA_DIR": str(data_dir),
                "SESSIONKIT_DATABASE_URL": database_url,
                "SESSIONKIT_HTTP_PORT": "0",  # no gateway: tests running side by side would share :8080
                "PYTHONPATH": f"{ROOT / 'sdk'}{os.pathsep}{ROOT}",
            }
        )
        env.update(extra_env or {})
        self.child = ChildProcess(
            [sys.executable, "-m", "sessionkit.cli", "serve", "--service", "state"],
            data_dir.parent / f"serve-{port}.log",
            env=env,
        )
        try:
            wait_serving(self.address, child=self.child)
        except TimeoutError as error:
            self.child.kill()
            raise TimeoutError(f"{error}; its log:\n{self.child.log()[-3000:]}") from None

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.child.proc

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill9(self) -> None:
        self.child.kill()

    def terminate(self) -> int:
        return self.child.stop(timeout=30)

    def stderr_text(self) -> str:
        """What the server has written to stderr (and stdout) so far."""
        return self.child.log()


def wait_http(url: str, proc: ChildProcess, timeout: float = 300) -> None:
    """Until the gateway at ``url`` answers /health with 200; fails at once if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.returncode is None, f"serve exited with {proc.returncode}:\n{proc.log()[-3000:]}"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url}/health not 200 after {timeout}s")


def serve_everything(directory: Path, llm_base_url: str, model: str, **env: str) -> tuple[ChildProcess, str]:
    """``sessionkit serve`` (every service and the gateway) in a child process working in ``directory``,
    its model the OpenAI-compatible server at ``llm_base_url``; returns it, once its gateway answers
    /health, with the gateway's URL. ``env``: more settings of the child."""
    from tests.conftest import free_port  # conftest imports this module

    http_port = free_port()
    proc = ChildProcess(
        [
            sys.executable, "-m", "sessionkit.cli", "serve", "--port", str(free_port()),
            "--http-port", str(http_port), "--data-dir", str(directory / "data"),
        ],
        directory / "serve.log",
        cwd=directory,
        env=child_env(
            SESSIONKIT_LLM_BASE_URL=llm_base_url,
            SESSIONKIT_LLM_MODEL=model,
            SESSIONKIT_LLM_API_KEY="sk-test",
            SESSIONKIT_DRAIN_SECONDS="2",
            HF_HUB_OFFLINE="1",
            **env,
        ),
    )  # fmt: skip
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_http(url, proc)
    except BaseException:
        proc.kill()
        raise
    return proc, url
