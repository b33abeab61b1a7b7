"""What the SDK's remote-mode tests share (also tests/project/test_praisonai_interop.py): the scripted LLM
and every service in one gRPC server, started once for the package's tests, and a real HTTP server in
front of the gateway that fails on purpose."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from sessionkit_server.common.config import ServerSettings
from tests.llm_server import LLMServer
from tests.servers import ServerThread

MODEL = "test-model"


@pytest.fixture(scope="package")
def module_llm() -> Iterator[LLMServer]:
    server = LLMServer(MODEL).start()
    yield server
    server.stop()


@pytest.fixture(scope="package")
def services(tmp_path_factory: pytest.TempPathFactory, module_llm: LLMServer) -> Iterator[ServerThread]:
    """Every service in one gRPC server (the embedding model loads once for the package's tests)."""
    settings = ServerSettings(
        port=0,
        data_dir=tmp_path_factory.mktemp("remote") / "data",
        services=["state", "memory", "knowledge", "agent"],
        log_format="text",
        llm_base_url=module_llm.base_url,
        llm_model=MODEL,
        llm_api_key="sk-test",
    )
    thread = ServerThread(settings).start()
    yield thread
    thread.stop()


# -- a real HTTP server in front of the gateway that fails on purpose ---------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    time: float


@dataclass
class Fault:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: Forward the request to the gateway first (it is applied), then answer the fault: a lost reply.
    forward: bool = False


class FaultyProxy:
    """Answers the next scripted faults, then forwards every request to the gateway as it is. Records
    what it received, so tests see how often and when the SDK asked. ``health=False``: every
    ``.../health`` path is 404, like a server that has no health route."""

    def __init__(self, target: str, health: bool = True) -> None:
        self.target = target
        self.faults: deque[Fault] = deque()
        self.seen: list[Seen] = []
        self.health = health
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                owner._serve(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.http = httpx.Client(base_url=target, timeout=60)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def fail(
        self, status: int, times: int = 1, headers: dict[str, str] | None = None, forward: bool = False
    ) -> None:
        for _ in range(times):
            body = json.dumps(
                {
                    "error": {
                        "code": status,
                        "status": "X",
                        "reason": "SCRIPTED",
                        "message": f"scripted {status}",
                    }
                }
            ).encode()
            self.faults.append(Fault(status, dict(headers or {}), body, forward))

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        body = handler.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in handler.headers.items()}
        self.seen.append(Seen(handler.command, handler.path, headers, time.monotonic()))
        if self.faults:
            fault = self.faults.popleft()
            if fault.forward:
                self._forward(handler, headers, body)
            status, out_headers, out = (
                fault.status,
                {"content-type": "application/json", **fault.headers},
                fault.body,
            )
        elif handler.path.split("?")[0].endswith("/health") and not self.health:
            status, out_headers, out = 404, {"content-type": "text/plain"}, b"no such route"
        else:
            reply = self._forward(handler, headers, body)
            status, out = reply.status_code, reply.content
            out_headers = {"content-type": reply.headers.get("content-type", "application/json")}
        handler.send_response(status)
        for name, value in out_headers.items():
            handler.send_header(name, value)
        handler.send_header("content-length", str(len(out)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(out)

    def _forward(
        self, handler: BaseHTTPRequestHandler, headers: dict[str, str], body: bytes
    ) -> httpx.Response:
        forwarded = {k: v for k, v in headers.items() if k not in ("host", "content-length", "connection")}
        return self.http.request(handler.command, handler.path, content=body, headers=forwarded)

    def posts(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST" and s.path.split("?")[0] == path]

    def start(self) -> FaultyProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.http.close()
