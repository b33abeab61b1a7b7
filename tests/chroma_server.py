"""A real Chroma server for tests: ``chroma run`` (the chromadb package's own CLI) on a free port.

Use the session fixture by importing it into a test module::

    from tests.chroma_server import chroma_server  # noqa: F401
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import chromadb
import httpx
import pytest
from chromadb.config import Settings

from sessionkit_server.retrieval.vector_index import close_chroma_client

CHROMA = Path(sys.executable).parent / "chroma"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ChromaServer:
    """``chroma run --path DIR --host 127.0.0.1 --port N`` as a child process; its output goes to
    ``DIR/chroma.log``."""

    def __init__(self, path: Path, port: int | None = None) -> None:
        self.path = path
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.log_path = path / "chroma.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ChromaServer:
        if not CHROMA.exists():
            raise RuntimeError(f"the chroma CLI is not installed next to {sys.executable}")
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(CHROMA), "run", "--path", str(self.path), "--host", self.host, "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"chroma run exited with {self.process.returncode}:\n{self._log_tail()}")
            if self._heartbeat():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"chroma run did not answer within {timeout} s:\n{self._log_tail()}")
            time.sleep(0.05)

    def _heartbeat(self) -> bool:
        try:
            client = chromadb.HttpClient(
                host=self.host, port=self.port, settings=Settings(anonymized_telemetry=False)
            )
        except (ValueError, httpx.TransportError):  # ValueError: chromadb's "could not connect"
            return False
        try:
            client.heartbeat()
            return True
        except (ValueError, httpx.TransportError):
            return False
        finally:
            close_chroma_client(client)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-2000:]
        return ""

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL ("http://127.0.0.1:PORT") of a real Chroma server shared by the test session."""
    server = ChromaServer(tmp_path_factory.mktemp("chroma-server")).start()
    try:
        yield server.url
    finally:
        server.stop()
