"""The offline model's OpenAI-compatible HTTP face: a minimal ASGI app for the few routes the agent
service uses (no web framework needed), served by uvicorn on loopback (see ``offline_llm``).

- ``POST /v1/chat/completions``, plain or ``stream: true`` (server-sent events in OpenAI's
  ``chat.completion.chunk`` format, a usage chunk when ``stream_options.include_usage`` is set);
- ``GET /v1/models`` and ``GET /v1/models/{id}``;
- errors in OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from typing import Any

import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sessionkit_server.agent.offline_model import (
    BadRequest,
    Generation,
    LoadedModel,
    generate,
    llm_executor,
    prepare,
    stream,
    usage,
)

MAX_REQUEST_BYTES = 8 * 1024 * 1024

logger = logging.getLogger(__name__)

ASGIReceive = Callable[[], Awaitable[MutableMapping[str, Any]]]
ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    # A string, a list of content parts, or null (an assistant turn that only called tools).
    content: str | list[dict[str, Any]] | None = None


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatRequest(BaseModel):
    # Unknown fields (tools, tool_choice, response_format, user, ...) are accepted and ignored: a 135M
    # model cannot call functions reliably, so it answers in text.
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[_Message] = Field(min_length=1)
    stream: bool | None = False
    stream_options: _StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    n: int | None = Field(default=None, ge=1, le=1)


class HTTPError(Exception):
    def __init__(
        self, status: int, message: str, kind: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _text_of(message: _Message, index: int, model_name: str) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    texts = []
    for part in message.content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise BadRequest(
                f"{model_name} reads text only: content part of type {part.get('type')!r} is not supported",
                param=f"messages[{index}].content",
            )
        texts.append(part["text"])
    return "".join(texts)


def _prepare(model: LoadedModel, request: ChatRequest, model_name: str) -> Generation:
    # OpenAI's newer "developer" role is what older models call "system"; the chat template knows the latter.
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": _text_of(m, i, model_name)}
        for i, m in enumerate(request.messages)
    ]
    return prepare(
        model,
        messages,
        stop=[request.stop] if isinstance(request.stop, str) else request.stop,
        max_tokens=request.max_completion_tokens or request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        seed=request.seed,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
    )


class App:
    """Serves one loaded model; every model call goes through the model thread."""

    def __init__(self, model: LoadedModel, model_name: str) -> None:
        self.model = model
        self.model_name = model_name
        self.created = int(time.time())
        self.generations: set[Generation] = set()

    def cancel_all(self) -> None:
        for generation in list(self.generations):
            generation.cancelled.set()

    async def __call__(self, scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"].rstrip("/")
        method: str = scope["method"]
        try:
            if path == "/v1/chat/completions":
                if method != "POST":
                    raise HTTPError(405, f"use POST for {path}", "invalid_request_error")
                await self._chat(receive, send)
            elif path == "/v1/models":
                self._allow_get(method, path)
                await _send_json(send, 200, {"object": "list", "data": [self._model_card()]})
            elif path.startswith("/v1/models/"):
                self._allow_get(method, path)
                asked = path.removeprefix("/v1/models/")
                if asked != self.model_name:
                    raise HTTPError(
                        404,
                        f"no model {asked!r}; this endpoint serves {self.model_name}",
                        "invalid_request_error",
                        code="model_not_found",
                    )
                await _send_json(send, 200, self._model_card())
            else:
                raise HTTPError(404, f"no route {method} {path}", "invalid_request_error")
        except HTTPError as error:
            await _send_json(send, error.status, error.body())

    @staticmethod
    def _allow_get(method: str, path: str) -> None:
        if method != "GET":
            raise HTTPError(405, f"use GET for {path}", "invalid_request_error")

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "sessionkit"}

    async def _chat(self, receive: ASGIReceive, send: ASGISend) -> None:
        body = await _read_body(receive)
        if body is None:
            return  # the client left before sending its request: nobody to answer
        request = _parse_chat(body)
        loop = asyncio.get_running_loop()
        executor = llm_executor()
        try:
            generation = await loop.run_in_executor(executor, _prepare, self.model, request, self.model_name)
        except BadRequest as error:
            raise HTTPError(
                400, error.message, "invalid_request_error", param=error.param, code=error.code
            ) from error
        self.generations.add(generation)
        # receive() returns http.disconnect when the client goes away: stop generating for nobody.
        watcher = asyncio.ensure_future(_on_disconnect(receive, generation.cancelled.set))
        try:
            if request.stream:
                include_usage = bool(request.stream_options and request.stream_options.include_usage)
                await self._stream_chat(send, generation, include_usage)
            else:
                await self._answer(send, generation)
        finally:
            # Also stops the generation when this task is cancelled (server shutdown, a dropped connection).
            generation.cancelled.set()
            watcher.cancel()
            self.generations.discard(generation)

    async def _answer(self, send: ASGISend, generation: Generation) -> None:
        loop = asyncio.get_running_loop()
        try:
            text, finish_reason, counts = await loop.run_in_executor(
                llm_executor(), generate, self.model, generation
            )
        except Exception as error:
            logger.exception("offline LLM generation failed")
            raise HTTPError(500, f"the offline LLM failed: {error}", "server_error") from error
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish_reason,
            "logprobs": None,
        }
        await _send_json(
            send,
            200,
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.model_name,
                "choices": [choice],
                "usage": counts,
            },
        )

    async def _stream_chat(self, send: ASGISend, generation: Generation, include_usage: bool) -> None:
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[tuple[str | None, str | None]] = asyncio.Queue()

        def emit(text: str | None, finish_reason: str | None) -> None:
            loop.call_soon_threadsafe(pieces.put_nowait, (text, finish_reason))

        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
            }

        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        await _send_event(send, chunk({"role": "assistant", "content": ""}, None))
        produced = loop.run_in_executor(llm_executor(), stream, self.model, generation, emit)
        # If sending fails (the client left) nobody awaits `produced`: retrieve its outcome anyway.
        produced.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            while True:
                text, finish_reason = await pieces.get()
                if text is None:
                    break
                await _send_event(send, chunk({"content": text}, None))
        finally:
            generation.cancelled.set()
        try:
            completion_tokens = await produced
        except Exception as error:
            # The status line is long gone: report the failure the way OpenAI does mid-stream (an
            # "error" event, which the openai client raises as APIError).
            logger.exception("offline LLM generation failed")
            await _send_event(send, HTTPError(500, f"the offline LLM failed: {error}", "server_error").body())
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await _send_event(send, chunk({}, finish_reason))
        if include_usage:
            usage_chunk = chunk({}, None) | {
                "choices": [],
                "usage": usage(len(generation.prompt_tokens), completion_tokens),
            }
            await _send_event(send, usage_chunk)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


def _parse_chat(body: bytes) -> ChatRequest:
    try:
        return ChatRequest.model_validate_json(body)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or None
        message = f"invalid request: {where + ': ' if where else ''}{first['msg']}"
        raise HTTPError(400, message, "invalid_request_error", param=where) from error


async def _read_body(receive: ASGIReceive) -> bytes | None:
    """The request body, or None if the client disconnected first."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > MAX_REQUEST_BYTES:
            raise HTTPError(413, f"request body over {MAX_REQUEST_BYTES} bytes", "invalid_request_error")
        if not message.get("more_body", False):
            return bytes(body)


async def _on_disconnect(receive: ASGIReceive, callback: Callable[[], None]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    callback()


async def _send_json(send: ASGISend, status: int, payload: Mapping[str, Any]) -> None:
    body = json.dumps(payload).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_event(send: ASGISend, payload: Mapping[str, Any]) -> None:
    data = f"data: {json.dumps(payload)}\n\n".encode()
    await send({"type": "http.response.body", "body": data, "more_body": True})


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside a process that owns its signals: the host (the gRPC server) handles SIGTERM and
    drains; uvicorn's own handlers would replace the host's and stop the LLM mid-drain."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
