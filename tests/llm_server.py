"""A real OpenAI-compatible HTTP server for tests: stdlib ``http.server`` on 127.0.0.1 (an ephemeral
port) in a thread, answering from a script.

- ``POST /v1/chat/completions``: the next scripted :class:`Reply`: a text answer, tool calls, or an
  HTTP error (500, 429 with ``Retry-After``, ...). ``"stream": true`` requests get the same reply as
  server-sent events (``chat.completion.chunk`` objects, then ``data: [DONE]``).
- ``GET /v1/models``: the one model it serves.

Every request is recorded (:class:`Received`: path, headers, JSON body, arrival time), so tests can
assert on prompts, models, keys and retry timing. With the script empty it answers 500 (the test
sees that the code under test asked more often than scripted).

    from tests.llm_server import LLMServer, llm_server_fixture  # noqa: F401 - the llm_server fixture

    def test_x(llm_server: LLMServer) -> None:
        llm_server.reply('{"operations": []}')
        llm_server.fail(429, retry_after=1)
        client = openai.OpenAI(base_url=llm_server.base_url, api_key="k")
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

DEFAULT_MODEL = "test-model"


@dataclass
class ToolCall:
    """A function call the assistant makes (``arguments``: a dict, sent JSON-encoded, or raw text)."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str = ""

    def message(self, index: int) -> dict[str, Any]:
        arguments = self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)
        return {
            "index": index,
            "id": self.id or f"call_{uuid.uuid4().hex[:12]}",
            "type": "function",
            "function": {"name": self.name, "arguments": arguments},
        }


@dataclass
class Reply:
    """One scripted answer. ``status`` >= 400 answers an OpenAI-style error (``error`` is its message);
    ``headers`` are sent as they are (e.g. ``Retry-After``); ``raw`` replaces the whole body (bytes sent
    as they are) for broken-server cases; ``delay`` seconds pass before answering, and with ``gate``
    the answer waits until the test sets it (a call held in flight for as long as a test needs)."""

    content: str | None = None
    status: int = 200
    error: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str = ""
    raw: bytes | None = None
    delay: float = 0.0
    gate: threading.Event | None = None
    #: Streaming only: the content split into these pieces (default: word by word).
    chunks: list[str] | None = None
    #: Streaming only: seconds between pieces (to see that they arrive one by one).
    piece_delay: float = 0.0


@dataclass
class Received:
    """One request the server got."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any
    time: float  # time.monotonic() at arrival

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", [])) if isinstance(self.body, dict) else []

    @property
    def prompt(self) -> str:
        """Every message's content, one after the other (to search the prompt for a text)."""
        return "\n".join(str(m.get("content") or "") for m in self.messages)


class LLMServer:
    def __init__(self, model: str = DEFAULT_MODEL) -> None:
        self.model = model
        self.requests: list[Received] = []
        #: Answers requests when the script is empty (e.g. an echo for benchmarks); None: answer 500.
        self.fallback: Callable[[Received], Reply] | None = None
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        owner = self

        class Handler(_Handler):
            server_owner = owner

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True, name="llm-server")

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> LLMServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- the script ---------------------------------------------------------------------------------------

    def script(self, *replies: Reply | str) -> LLMServer:
        """Queue answers (a str is a text answer), used in order, one per chat completion request."""
        with self._lock:
            for reply in replies:
                self._script.append(Reply(content=reply) if isinstance(reply, str) else reply)
        return self

    def reply(self, content: str) -> LLMServer:
        return self.script(Reply(content=content))

    def reply_json(self, value: Any) -> LLMServer:
        return self.script(Reply(content=json.dumps(value)))

    def fail(self, status: int, message: str = "", retry_after: float | str | None = None) -> LLMServer:
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        return self.script(Reply(status=status, error=message or f"scripted {status}", headers=headers))

    @property
    def pending(self) -> int:
        """Scripted replies not used yet."""
        with self._lock:
            return len(self._script)

    @property
    def chat_requests(self) -> list[Received]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def _next(self) -> Reply | None:
        with self._lock:
            if self._script:
                return self._script.popleft()
            if self.fallback is not None and self.requests:
                return self.fallback(self.requests[-1])
            return None

    def _record(self, request: Received) -> None:
        with self._lock:
            self.requests.append(request)


class _Handler(BaseHTTPRequestHandler):
    server_owner: LLMServer
    _prompt_words = 0
    _include_usage = False
    protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers after stop()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- routing -------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._received(None)
        if self.path.rstrip("/") == "/v1/models":
            model = {"id": self.server_owner.model, "object": "model", "created": 0, "owned_by": "tests"}
            self._json(200, {"object": "list", "data": [model]})
        else:
            self._error(404, f"no route GET {self.path}", "not_found")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = raw.decode(errors="replace")
        self._received(body)
        self._prompt_words = sum(
            len(str(m.get("content") or "").split())
            for m in (body.get("messages") or [] if isinstance(body, dict) else [])
            if isinstance(m, dict)
        )
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no route POST {self.path}", "not_found")
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self._error(400, "the body must be a JSON object with a messages list", "invalid_request_error")
            return
        reply = self.server_owner._next()
        if reply is None:
            self._error(500, "llm_server: no scripted reply left for this request", "server_error")
            return
        if reply.delay:
            time.sleep(reply.delay)
        if reply.gate is not None:
            reply.gate.wait(timeout=300)
        if reply.raw is not None:
            self._send(reply.status, reply.raw, "application/json", reply.headers)
        elif reply.status >= 400:
            self._error(reply.status, reply.error, "scripted_error", reply.headers)
        elif body.get("stream"):
            options = body.get("stream_options")
            self._include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            self._stream(reply, str(body.get("model", "")))
        else:
            self._json(reply.status, self._completion(reply, str(body.get("model", ""))), reply.headers)

    # -- answers -------------------------------------------------------------------------------------

    def _received(self, body: Any) -> None:
        self.server_owner._record(
            Received(
                self.command,
                self.path,
                {k.lower(): v for k, v in self.headers.items()},
                body,
                time.monotonic(),
            )
        )

    def _completion(self, reply: Reply, model: str) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.tool_calls:
            message["tool_calls"] = [call.message(i) for i, call in enumerate(reply.tool_calls)]
        finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model or self.server_owner.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": _usage(self._prompt_words, reply),
        }

    def _stream(self, reply: Reply, model: str) -> None:
        """The reply as server-sent events: a role delta, content pieces, tool calls, the finish."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:16]}", int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> None:
            event = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model or self.server_owner.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.flush()

        chunk({"role": "assistant", "content": ""})
        content = reply.content or ""
        pieces = reply.chunks if reply.chunks is not None else _words(content)
        for piece in pieces:
            if reply.piece_delay:
                time.sleep(reply.piece_delay)
            chunk({"content": piece})
        for i, call in enumerate(reply.tool_calls):
            chunk({"tool_calls": [call.message(i)]})
        chunk({}, reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop"))
        if self._include_usage:
            event = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model or self.server_owner.model,
                "choices": [],
                "usage": _usage(self._prompt_words, reply),
            }
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _error(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> None:
        body = {"error": {"message": message, "type": kind, "param": None, "code": str(status)}}
        self._json(status, body, headers)

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", headers)

    def _send(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _usage(prompt_words: int, reply: Reply) -> dict[str, int]:
    """Token counts that follow the text (words), so tests can see them add up."""
    completion = len((reply.content or "").split()) + len(reply.tool_calls)
    return {
        "prompt_tokens": prompt_words,
        "completion_tokens": completion,
        "total_tokens": prompt_words + completion,
    }


def _words(text: str) -> list[str]:
    """``text`` in pieces that join back to it exactly (each word with the space before it)."""
    pieces: list[str] = []
    for i, word in enumerate(text.split(" ")):
        pieces.append(word if i == 0 else " " + word)
    return [p for p in pieces if p]


@pytest.fixture(name="llm_server")
def llm_server_fixture() -> Iterator[LLMServer]:
    """``llm_server``: a fresh scripted OpenAI-compatible server for one test (import
    ``llm_server_fixture`` into a test module to use it)."""
    server = LLMServer().start()
    yield server
    server.stop()
