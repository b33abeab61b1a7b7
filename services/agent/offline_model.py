"""The offline model itself: the packaged SmolLM2 GGUF loaded by transformers (dequantized onto the CPU
build of torch the embedding model already uses), its chat template, and token-by-token generation.

Everything here runs on one dedicated thread (:func:`llm_executor`): it serializes generations (one
model, one KV cache at a time) and keeps the CPU work off every event loop. The HTTP side
(``offline_http``) turns requests into :class:`Generation` objects and calls :func:`prepare`,
:func:`generate` and :func:`stream` through that thread.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sessionkit import reasons

if TYPE_CHECKING:
    import torch

# SmolLM2's authors recommend these for the instruct model; OpenAI's own default (temperature 1) makes a
# 135M model ramble, so a request that sets neither gets these.
DEFAULT_TEMPERATURE = 0.2
DEFAULT_TOP_P = 0.9

logger = logging.getLogger(__name__)

_executor_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_models_lock = threading.Lock()
_models: dict[tuple[str, int, int], LoadedModel] = {}


def llm_executor() -> ThreadPoolExecutor:
    """The one thread that runs every model call of this process."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sessionkit-llm")
        return _executor


class BadRequest(Exception):
    """A request the model cannot take (answered 400 by the HTTP side)."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass
class LoadedModel:
    model: Any  # transformers' LlamaForCausalLM
    tokenizer: Any  # its fast tokenizer, built from the GGUF's vocabulary
    n_ctx: int
    stop_ids: frozenset[int]
    load_seconds: float
    #: The forward pass's name for the KV cache: "cache" since transformers 5.x deprecated
    #: "past_key_values" (a warning, an error under pytest's warnings-as-errors).
    cache_argument: str = "past_key_values"


@dataclass(eq=False)  # identity semantics: the HTTP side keeps the in-flight ones in a set
class Generation:
    """One request's generation: what the model thread needs, and the flag that stops it early."""

    prompt_tokens: list[int]
    stop: list[str]
    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    presence_penalty: float
    frequency_penalty: float
    cancelled: threading.Event = field(default_factory=threading.Event)


def load_model(path: str, n_ctx: int, n_threads: int) -> LoadedModel:
    """The process's model for these settings, loaded and warmed up on first use (runs on the llm thread)."""
    key = (str(Path(path).resolve()), n_ctx, n_threads)
    with _models_lock:
        loaded = _models.get(key)
        if loaded is not None:
            return loaded
        if not Path(path).is_file():
            raise reasons.LLM_MODEL_UNAVAILABLE.error(
                detail=f"no model file at {path}",
                metadata={"path": path},
            )
        started = time.perf_counter()
        model, tokenizer = _read_gguf(Path(path), n_threads)
        if not getattr(tokenizer, "chat_template", None):
            raise reasons.LLM_MODEL_UNAVAILABLE.error(
                detail=f"could not load {path}: the GGUF has no chat template",
                metadata={"path": path},
            )
        eos = model.generation_config.eos_token_id
        stop_ids = frozenset(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        forward_parameters = inspect.signature(model.forward).parameters
        cache_argument = "cache" if "cache" in forward_parameters else "past_key_values"
        loaded = LoadedModel(model, tokenizer, n_ctx, stop_ids, 0.0, cache_argument)
        # One token now: a broken install fails at start-up rather than in a user's conversation, and
        # the first request does not pay for torch's lazy initialisation.
        warm_up = prepare(loaded, [{"role": "user", "content": "Hello"}], max_tokens=1, temperature=0)
        generate(loaded, warm_up)
        loaded.load_seconds = time.perf_counter() - started
        _models[key] = loaded
        return loaded


def _read_gguf(path: Path, n_threads: int) -> tuple[Any, Any]:
    # Read by huggingface_hub / transformers at import: never touch the network, no progress bars.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # transformers' GGUF reader draws a tqdm bar per load on a server's stderr; no other switch stops it.
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch
    import transformers

    # Intra-op threads spin-wait for each other: on two busy cores, two threads made a generation
    # several times slower than one (see offline_llm.default_threads). Set on this thread, which runs
    # every generation.
    torch.set_num_threads(n_threads)
    converted = converted_copy(path, transformers.__version__)
    try:
        if converted is not None and (converted / "config.json").is_file():
            tokenizer: Any = transformers.AutoTokenizer.from_pretrained(str(converted))
            model: Any = transformers.AutoModelForCausalLM.from_pretrained(
                str(converted), dtype=torch.float32
            )
            return model.eval(), tokenizer
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
    except Exception as error:  # a corrupt file, or one transformers cannot read
        raise reasons.LLM_MODEL_UNAVAILABLE.error(
            detail=f"could not load {path}: {error}",
            metadata={"path": str(path)},
        ) from error
    if converted is not None:
        _save_converted(model, tokenizer, converted)
    return model.eval(), tokenizer


def converted_copy(path: Path, transformers_version: str) -> Path | None:
    """Where the model converted from ``path`` is kept, or None if SESSIONKIT_OFFLINE_LLM_CACHE is "off".

    transformers reads a GGUF slowly (its reader parses the 49k-token vocabulary three times and
    dequantizes every tensor: 15-35 s here, against 2-5 s for the converted copy), so the first load
    of a file saves what it made, and later loads (every server start) read that instead. The name
    changes with the file and the transformers version, so a stale copy is never read."""
    configured = os.environ.get("SESSIONKIT_OFFLINE_LLM_CACHE", "")
    if configured.lower() == "off":
        return None
    if configured:
        root = Path(configured)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sessionkit" / "offline-llm"
    stat = path.stat()
    return root / f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}-transformers{transformers_version}"


def _save_converted(model: Any, tokenizer: Any, target: Path) -> None:
    """Writes the converted copy beside its final name and renames it into place, so a reader never
    sees half a copy and two processes converting at once do not mix their files. Best effort: a
    read-only or full disk costs the next start its time, not this one its model."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
    # transformers marks a model read from a GGUF as quantized and refuses to save it, although its
    # weights are plain float32 by now: saved without the mark, they load back as an ordinary model.
    quantizer = getattr(model, "hf_quantizer", None)
    quantization = model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    try:
        model.save_pretrained(str(temporary))
        tokenizer.save_pretrained(str(temporary))
        os.replace(temporary, target)
    except Exception as error:
        shutil.rmtree(temporary, ignore_errors=True)
        if not (target / "config.json").is_file():  # else another process kept its copy first
            logger.warning("offline LLM: could not keep the converted model at %s: %s", target, error)
    finally:
        model.hf_quantizer = quantizer
        if quantization is not None:
            model.config.quantization_config = quantization


def prepare(
    model: LoadedModel,
    messages: list[dict[str, str]],
    *,
    stop: list[str] | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
) -> Generation:
    """Formats the messages with the GGUF's chat template and tokenizes them, so a bad or oversized
    prompt is refused before a stream starts (runs on the llm thread)."""
    try:
        prompt = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as error:  # the template's raise_exception (e.g. roles out of order)
        raise BadRequest(
            f"the messages do not fit the model's chat template: {error}", param="messages"
        ) from error
    tokens: list[int] = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if len(tokens) >= model.n_ctx:
        raise BadRequest(
            f"the prompt is {len(tokens)} tokens; the offline model here has a context window of "
            f"{model.n_ctx}",
            param="messages",
            code="context_length_exceeded",
        )
    return Generation(
        prompt_tokens=tokens,
        stop=[s for s in stop or [] if s],
        max_tokens=max_tokens,
        temperature=DEFAULT_TEMPERATURE if temperature is None else temperature,
        top_p=DEFAULT_TOP_P if top_p is None else top_p,
        seed=seed,
        presence_penalty=presence_penalty or 0.0,
        frequency_penalty=frequency_penalty or 0.0,
    )


def generate(model: LoadedModel, generation: Generation) -> tuple[str, str, dict[str, int]]:
    """(text, finish_reason, usage) of a whole completion (runs on the llm thread)."""
    pieces: list[str] = []
    finish_reason, produced = _run(model, generation, lambda text: pieces.append(text))
    return "".join(pieces), finish_reason, usage(len(generation.prompt_tokens), produced)


def stream(model: LoadedModel, generation: Generation, emit: Callable[[str | None, str | None], None]) -> int:
    """Generates token by token, calling ``emit(text, None)`` for each piece of text as soon as it is
    final and ``emit(None, finish_reason)`` at the end; returns the number of tokens generated (runs on
    the llm thread)."""
    finish_reason = "stop"
    try:
        finish_reason, produced = _run(model, generation, lambda text: emit(text, None))
    finally:
        # Also on an error, so the response side stops waiting for text and reads the error.
        emit(None, finish_reason)
    return produced


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _run(model: LoadedModel, generation: Generation, emit: Callable[[str], None]) -> tuple[str, int]:
    """Samples until a stop token, a stop string, ``max_tokens``, the context's end or cancellation,
    passing on text only once no stop string can still begin in it. Returns (finish_reason, tokens)."""
    limit = model.n_ctx - len(generation.prompt_tokens)
    if generation.max_tokens is not None:
        limit = min(limit, generation.max_tokens)
    produced: list[int] = []
    sent = 0  # characters of the decoded text already emitted
    finish_reason = "length"
    tokens = _sample_tokens(model, generation)
    try:
        while len(produced) < limit:
            if generation.cancelled.is_set():
                finish_reason = "stop"
                break
            token = next(tokens)
            if token in model.stop_ids:
                finish_reason = "stop"
                break
            produced.append(token)
            text = model.tokenizer.decode(
                produced, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
            if text.endswith("\ufffd"):
                continue  # the middle of a multi-byte character: wait for the rest of it
            cut = _first_stop(text, generation.stop)
            if cut is not None:
                if cut > sent:
                    emit(text[sent:cut])
                return "stop", len(produced)
            safe = len(text) - _held_back(text, generation.stop)
            if safe > sent:
                emit(text[sent:safe])
                sent = safe
    finally:
        tokens.close()
    if produced:
        text = model.tokenizer.decode(produced, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if len(text) > sent:
            emit(text[sent:])
    return finish_reason, len(produced)


def _first_stop(text: str, stops: list[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters could be the start of a stop string (sent only once they are not)."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def _sample_tokens(model: LoadedModel, generation: Generation) -> Generator[int, None, None]:
    """The next token, one at a time: each ``next()`` runs one forward pass over the KV cache (the
    prompt's on the first), so nothing is computed past the token the caller stops at."""
    import torch
    from transformers import DynamicCache

    rng = torch.Generator().manual_seed(generation.seed) if generation.seed is not None else None
    counts: torch.Tensor | None = None
    if generation.presence_penalty or generation.frequency_penalty:
        counts = torch.zeros(model.model.config.vocab_size)
    cache = DynamicCache()
    with torch.inference_mode():
        inputs = torch.tensor([generation.prompt_tokens])
        while True:
            output = model.model(
                input_ids=inputs, use_cache=True, logits_to_keep=1, **{model.cache_argument: cache}
            )
            token = _pick(output.logits[0, -1].float(), generation, rng, counts)
            if counts is not None:
                counts[token] += 1
            yield token
            inputs = torch.tensor([[token]])


def _pick(
    logits: torch.Tensor, generation: Generation, rng: torch.Generator | None, counts: torch.Tensor | None
) -> int:
    import torch

    if counts is not None:
        # OpenAI's penalties: each time a token was generated, and once for having appeared at all.
        logits = logits - counts * generation.frequency_penalty - (counts > 0) * generation.presence_penalty
    if generation.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / generation.temperature, dim=-1)
    if generation.top_p < 1:
        ordered, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least the most likely token).
        outside = torch.cumsum(ordered, dim=-1) - ordered >= generation.top_p
        ordered[outside] = 0
        return int(order[torch.multinomial(ordered, 1, generator=rng)])
    return int(torch.multinomial(probs, 1, generator=rng))
