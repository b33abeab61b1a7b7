"""Splitting extracted text into chunks.

Sizes are counted in the embedding model's own tokens (all-MiniLM-L6-v2's WordPiece, through
:mod:`sessionkit_server.retrieval.tokens`), so a chunk of ``chunk_size`` tokens is what the model reads: the
model embeds at most :data:`~sessionkit_server.retrieval.tokens.EMBEDDABLE_TOKENS` (254) tokens of a text, the
default chunk size. A larger ``chunk_size`` makes chunks whose vector covers only their first 254 tokens
(the whole text is still stored, returned and matched lexically). The text is tokenized once and
ranges are counted by bisecting the token offsets. Windows are cut between words when they can be (a
cut inside a word is made only when one word is longer than a window), so a chunk's text re-tokenizes
to the tokens it was counted with. Strategies:

- TOKEN: fixed windows of ``chunk_size`` tokens; consecutive windows share ``chunk_overlap`` tokens.
- SENTENCE: whole sentences packed up to ``chunk_size`` tokens (a longer sentence falls back to token
  windows); the last ``chunk_overlap`` tokens' worth of sentences are repeated in the next chunk.
- RECURSIVE: markdown-aware: split at headings (keeping the heading path), then paragraphs, then
  sentences, then token windows, packing pieces up to ``chunk_size``.
- SEMANTIC: sentences grouped by meaning: a new chunk starts where the cosine similarity of two
  neighbouring sentences' embeddings drops below ``semantic_threshold`` (or at ``chunk_size``). The
  service embeds the sentences and calls :func:`semantic`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from sessionkit.errors import FieldViolation, InvalidArgument
from sessionkit_server.retrieval.tokens import EMBEDDABLE_TOKENS, token_offsets

TOKEN, SENTENCE, RECURSIVE, SEMANTIC = 1, 2, 3, 4
STRATEGY_NAMES = {TOKEN: "token", SENTENCE: "sentence", RECURSIVE: "recursive", SEMANTIC: "semantic"}
#: What the embedding model reads of a text (its 256-token window minus [CLS] and [SEP]).
DEFAULT_CHUNK_SIZE = EMBEDDABLE_TOKENS
#: SEMANTIC: neighbouring sentences less similar than this start a new chunk (all-MiniLM-L6-v2 puts
#: sentences on one topic around 0.3-0.7 and unrelated ones below 0.2).
DEFAULT_SEMANTIC_THRESHOLD = 0.25
MIN_CHUNK_SIZE, MAX_CHUNK_SIZE = 16, 8192

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class ChunkerConfig:
    strategy: int = RECURSIVE
    chunk_size: int = DEFAULT_CHUNK_SIZE
    chunk_overlap: int = DEFAULT_CHUNK_SIZE // 8
    #: SEMANTIC only (0.0 otherwise).
    semantic_threshold: float = 0.0

    def as_dict(self) -> dict[str, int | float]:
        out: dict[str, int | float] = {
            "strategy": self.strategy,
            "chunk_size": self.chunk_size,
            "chunk_overlap": self.chunk_overlap,
        }
        if self.strategy == SEMANTIC:
            out["semantic_threshold"] = self.semantic_threshold
        return out


def chunker_config(
    strategy: int, chunk_size: int, chunk_overlap: int | None, semantic_threshold: float | None = None
) -> ChunkerConfig:
    """Validate a chunker request, filling in the defaults."""
    strategy = strategy or RECURSIVE
    if strategy not in STRATEGY_NAMES:
        raise InvalidArgument(
            f"unknown chunker strategy {strategy}",
            violations=[FieldViolation("chunker.strategy", "token, sentence, recursive or semantic")],
        )
    size = chunk_size or DEFAULT_CHUNK_SIZE
    if not MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE:
        raise InvalidArgument(
            f"invalid chunk_size {size}",
            violations=[FieldViolation("chunker.chunk_size", f"{MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE}")],
        )
    overlap = size // 8 if chunk_overlap is None else chunk_overlap
    if not 0 <= overlap < size:
        raise InvalidArgument(
            f"invalid chunk_overlap {overlap}",
            violations=[FieldViolation("chunker.chunk_overlap", f"0 to chunk_size - 1 ({size - 1})")],
        )
    threshold = DEFAULT_SEMANTIC_THRESHOLD if semantic_threshold is None else semantic_threshold
    if strategy != SEMANTIC:
        threshold = 0.0
    elif not 0.0 < threshold <= 1.0:
        raise InvalidArgument(
            f"invalid semantic_threshold {threshold}",
            violations=[FieldViolation("chunker.semantic_threshold", "in (0, 1]")],
        )
    return ChunkerConfig(strategy, size, overlap, threshold)


@dataclass(frozen=True)
class Chunk:
    text: str
    start: int
    end: int
    heading_path: tuple[str, ...] = ()


class Tokens:
    """The token offsets of one text: counts tokens in any character range by bisection."""

    def __init__(self, text: str) -> None:
        self.text = text
        offsets = token_offsets(text)
        self.starts = np.ascontiguousarray(offsets[:, 0])
        self.ends = np.ascontiguousarray(offsets[:, 1])

    def index_range(self, start: int, end: int) -> tuple[int, int]:
        """Indices [i, j) of the tokens lying inside text[start:end]."""
        i = int(np.searchsorted(self.starts, start, "left"))
        j = int(np.searchsorted(self.ends, end, "right"))
        return i, max(i, j)

    def count(self, start: int, end: int) -> int:
        i, j = self.index_range(start, end)
        return j - i

    def word_start(self, k: int) -> bool:
        """Whether token ``k`` starts a word: a chunk may begin there without splitting a word into
        word pieces that would re-tokenize differently (e.g. "Token|ization")."""
        if k <= 0 or k >= len(self.starts):
            return True
        before, at = int(self.ends[k - 1]), int(self.starts[k])
        return before != at or not (self.text[before - 1].isalnum() and self.text[at].isalnum())


def split(text: str, config: ChunkerConfig, tokens: Tokens | None = None) -> list[Chunk]:
    """``text`` in chunks of at most ``config.chunk_size`` tokens (``tokens``: the text's, if known)."""
    tk = tokens or Tokens(text)
    return _split(text, 0, len(text), config, tk)


def _split(text: str, start: int, end: int, config: ChunkerConfig, tk: Tokens) -> list[Chunk]:
    if config.strategy == TOKEN:
        return _windows(tk, start, end, config.chunk_size, config.chunk_overlap, ())
    if config.strategy == SENTENCE:
        return _pack(tk, _sentences(text, start, end), config, ())
    return _recursive(tk, start, end, config)


def split_pages(text: str, page_starts: list[int], config: ChunkerConfig) -> list[Chunk]:
    """:func:`split` within each page (chunks never span a page break), offsets into the whole text."""
    tk = Tokens(text)
    if len(page_starts) < 2:
        return _split(text, 0, len(text), config, tk)
    out: list[Chunk] = []
    for start, end in zip(page_starts, [*page_starts[1:], len(text)], strict=True):
        out.extend(_split(text, start, end, config, tk))
    return out


def sentences(text: str) -> list[tuple[int, int]]:
    """The text's sentences (and paragraphs without end punctuation), as (start, end) offsets."""
    out: list[tuple[int, int]] = []
    cursor = 0
    for match in _PARAGRAPH.finditer(text):
        out.extend(_sentences(text, cursor, match.start()))
        cursor = match.end()
    out.extend(_sentences(text, cursor, len(text)))
    return out


def semantic(
    text: str,
    pieces: list[tuple[int, int]],
    vectors: list[list[float]],
    config: ChunkerConfig,
    tokens: Tokens | None = None,
) -> list[Chunk]:
    """Group consecutive sentences (``pieces``, embedded as ``vectors``, unit length) into chunks: a
    break where neighbours' cosine similarity is below the threshold, or where chunk_size would be
    passed. A sentence over chunk_size becomes token windows."""
    tk = tokens or Tokens(text)
    out: list[Chunk] = []
    group: list[tuple[int, int]] = []
    count = 0

    def flush() -> None:
        if group:
            start, end = group[0][0], group[-1][1]
            out.append(Chunk(text[start:end].strip(), start, end))
            group.clear()

    for n, (start, end) in enumerate(pieces):
        size = tk.count(start, end)
        if size > config.chunk_size:
            flush()
            count = 0
            out.extend(_windows(tk, start, end, config.chunk_size, config.chunk_overlap, ()))
            continue
        if group:
            similarity = sum(a * b for a, b in zip(vectors[n - 1], vectors[n], strict=True))
            if similarity < config.semantic_threshold or count + size > config.chunk_size:
                flush()
                count = 0
        group.append((start, end))
        count += size
    flush()
    return [c for c in out if c.text]


def _windows(tk: Tokens, start: int, end: int, size: int, overlap: int, path: tuple[str, ...]) -> list[Chunk]:
    """Windows of at most ``size`` tokens over text[start:end], consecutive windows sharing about
    ``overlap`` tokens; window edges move back to the nearest word start."""
    first, last = tk.index_range(start, end)
    out: list[Chunk] = []
    i = first
    while i < last:
        stop = min(i + size, last)
        if stop < last:
            # Back off to a word start so the next window does not begin inside a word.
            cut = stop
            while cut > i + 1 and not tk.word_start(cut):
                cut -= 1
            if cut > i + 1 or tk.word_start(cut):
                stop = cut
        s, e = int(tk.starts[i]), int(tk.ends[stop - 1])
        out.append(Chunk(tk.text[s:e], s, e, path))
        if stop >= last:
            break
        i = _next_start(tk, i, stop, overlap)
    return out


def _next_start(tk: Tokens, i: int, stop: int, overlap: int) -> int:
    """Where the window after [i, stop) begins: ``overlap`` tokens before ``stop``, moved back to a
    word start (a little more overlap, the same window size), else forward to one; always past ``i``."""
    wanted = max(stop - overlap, i + 1)
    back = wanted
    while back > i + 1 and not tk.word_start(back):
        back -= 1
    if tk.word_start(back):
        return back
    forward = wanted
    while forward < stop and not tk.word_start(forward):
        forward += 1
    return forward


def _sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    position = start
    for match in _SENTENCE_END.finditer(text, start, end):
        cut = match.start()
        if text[position:cut].strip():
            out.append((position, cut))
        position = match.end()
    if text[position:end].strip():
        out.append((position, end))
    return out


def _pack(
    tk: Tokens, pieces: list[tuple[int, int]], config: ChunkerConfig, path: tuple[str, ...]
) -> list[Chunk]:
    """Greedily pack consecutive pieces up to chunk_size tokens; oversized pieces become token windows.
    The next chunk starts with the previous chunk's last pieces holding up to chunk_overlap tokens."""
    text = tk.text
    size, overlap = config.chunk_size, config.chunk_overlap
    out: list[Chunk] = []
    current: list[tuple[int, int, int]] = []  # (start, end, tokens)
    total = 0

    def flush() -> None:
        if current:
            s, e = current[0][0], current[-1][1]
            out.append(Chunk(text[s:e].strip(), s, e, path))

    for s, e in pieces:
        n = tk.count(s, e)
        if n == 0:
            continue
        if n > size:
            flush()
            current.clear()
            total = 0
            out.extend(_windows(tk, s, e, size, overlap, path))
            continue
        if current and total + n > size:
            flush()
            kept: list[tuple[int, int, int]] = []
            carried = 0
            for piece in reversed(current):
                if carried + piece[2] > overlap or carried + piece[2] + n > size:
                    break
                kept.insert(0, piece)
                carried += piece[2]
            current[:] = kept
            total = carried
        current.append((s, e, n))
        total += n
    flush()
    return out


def _recursive(tk: Tokens, start: int, end: int, config: ChunkerConfig) -> list[Chunk]:
    text = tk.text
    sections: list[tuple[int, int, tuple[str, ...]]] = []
    path: list[tuple[int, str]] = []
    position = start
    current: tuple[str, ...] = ()
    for match in _HEADING.finditer(text, start, end):
        sections.append((position, match.start(), current))
        level = len(match.group(1))
        path = [(lvl, title) for lvl, title in path if lvl < level] + [(level, match.group(2).strip())]
        current = tuple(title for _, title in path)
        position = match.start()  # the heading line belongs to its section
    sections.append((position, end, current))
    out: list[Chunk] = []
    for s_start, s_end, heading in sections:
        if not text[s_start:s_end].strip():
            continue
        pieces: list[tuple[int, int]] = []
        cursor = s_start
        for match in _PARAGRAPH.finditer(text, s_start, s_end):
            pieces.extend(_paragraph(tk, cursor, match.start(), config.chunk_size))
            cursor = match.end()
        pieces.extend(_paragraph(tk, cursor, s_end, config.chunk_size))
        out.extend(_pack(tk, pieces, config, heading))
    return [c for c in out if c.text]


def _paragraph(tk: Tokens, start: int, end: int, size: int) -> list[tuple[int, int]]:
    """A paragraph as one piece, or as its sentences when it is over ``size`` tokens."""
    if not tk.text[start:end].strip():
        return []
    if tk.count(start, end) <= size:
        return [(start, end)]
    return _sentences(tk.text, start, end)
