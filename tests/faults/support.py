"""A real `sessionkit serve` in a child process for the fault suites (stopped, killed, out of disk),
with the gateway in the same process when asked."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.servers import ROOT, ChildProcess, child_env, wait_serving


class Served:
    """``sessionkit serve --service state`` (gRPC, and the gateway on ``http_port`` unless 0), data in
    ``data_dir``; ``restart()`` starts it again on the same ports and data."""

    def __init__(
        self,
        data_dir: Path,
        *,
        http: bool = False,
        database_url: str = "",
        log_dir: Path | None = None,
        **env: str,
    ) -> None:
        self.data_dir = data_dir
        self.log_dir = log_dir or data_dir.parent
        self.port = free_port()
        self.http_port = free_port() if http else 0
        self.env = child_env(
            SESSIONKIT_PORT=str(self.port),
            SESSIONKIT_HTTP_PORT=str(self.http_port),
            SESSIONKIT_DATA_DIR=str(data_dir),
            SESSIONKIT_DATABASE_URL=database_url,
            SESSIONKIT_LOG_LEVEL="WARNING",
            SESSIONKIT_RATE_LIMIT_PER_SECOND="0",
            **env,
        )
        self.starts = 0
        self.child = self._start()

    def _start(self) -> ChildProcess:
        self.starts += 1
        child = ChildProcess(
            [sys.executable, "-m", "sessionkit.cli", "serve", "--service", "state"],
            self.log_dir / f"serve-{self.port}-{self.starts}.log",
            env=self.env,
            cwd=ROOT,
        )
        try:
            wait_serving(self.address, timeout=120, child=child)
            if self.http_port:
                _wait_http(f"{self.url}/health", child)
        except BaseException:
            child.kill()
            raise
        return child

    def restart(self) -> None:
        self.child.kill()
        self.child = self._start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def close(self) -> None:
        self.child.kill()


def _wait_http(url: str, child: ChildProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if child.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the gateway at {url} did not come up:\n{child.log()[-3000:]}")
        time.sleep(0.05)
