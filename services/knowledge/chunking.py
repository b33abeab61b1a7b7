"""Splitting extracted text into chunks.

Tokens here are the text's words and punctuation runs (``\\S+``), a close stand-in for the embedding
model's word pieces that keeps exact character offsets. Strategies:

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

from sessionkit.errors import FieldViolation, InvalidArgument

TOKEN, SENTENCE, RECURSIVE, SEMANTIC = 1, 2, 3, 4
STRATEGY_NAMES = {TOKEN: "token", SENTENCE: "sentence", RECURSIVE: "recursive", SEMANTIC: "semantic"}
DEFAULT_CHUNK_SIZE = 512
#: SEMANTIC: neighbouring sentences less similar than this start a new chunk (all-MiniLM-L6-v2 puts
#: sentences on one topic around 0.3-0.7 and unrelated ones below 0.2).
DEFAULT_SEMANTIC_THRESHOLD = 0.25
MIN_CHUNK_SIZE, MAX_CHUNK_SIZE = 16, 8192

_WORD = re.compile(r"\S+")
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


def split(text: str, config: ChunkerConfig) -> list[Chunk]:
    if config.strategy == TOKEN:
        return _windows(text, 0, len(text), config.chunk_size, config.chunk_overlap, ())
    if config.strategy == SENTENCE:
        return _pack(text, _sentences(text, 0, len(text)), config, ())
    return _recursive(text, config)


def split_pages(text: str, page_starts: list[int], config: ChunkerConfig) -> list[Chunk]:
    """:func:`split` within each page (chunks never span a page break), offsets into the whole text."""
    if len(page_starts) < 2:
        return split(text, config)
    out: list[Chunk] = []
    for start, end in zip(page_starts, [*page_starts[1:], len(text)], strict=True):
        for c in split(text[start:end], config):
            out.append(Chunk(c.text, c.start + start, c.end + start, c.heading_path))
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
    text: str, pieces: list[tuple[int, int]], vectors: list[list[float]], config: ChunkerConfig
) -> list[Chunk]:
    """Group consecutive sentences (``pieces``, embedded as ``vectors``, unit length) into chunks: a
    break where neighbours' cosine similarity is below the threshold, or where chunk_size would be
    passed. A sentence over chunk_size becomes token windows."""
    out: list[Chunk] = []
    group: list[tuple[int, int]] = []
    tokens = 0

    def flush() -> None:
        if group:
            start, end = group[0][0], group[-1][1]
            out.append(Chunk(text[start:end].strip(), start, end))
            group.clear()

    for n, (start, end) in enumerate(pieces):
        count = _tokens(text, start, end)
        if count > config.chunk_size:
            flush()
            tokens = 0
            out.extend(_windows(text, start, end, config.chunk_size, config.chunk_overlap, ()))
            continue
        if group:
            similarity = sum(a * b for a, b in zip(vectors[n - 1], vectors[n], strict=True))
            if similarity < config.semantic_threshold or tokens + count > config.chunk_size:
                flush()
                tokens = 0
        group.append((start, end))
        tokens += count
    flush()
    return [c for c in out if c.text]


def _windows(text: str, start: int, end: int, size: int, overlap: int, path: tuple[str, ...]) -> list[Chunk]:
    words = [(m.start(), m.end()) for m in _WORD.finditer(text, start, end)]
    out: list[Chunk] = []
    step = size - overlap
    i = 0
    while i < len(words):
        window = words[i : i + size]
        s, e = window[0][0], window[-1][1]
        out.append(Chunk(text[s:e], s, e, path))
        if i + size >= len(words):
            break
        i += step
    return out


def _tokens(text: str, start: int, end: int) -> int:
    return sum(1 for _ in _WORD.finditer(text, start, end))


def _sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    position = start
    for match in _SENTENCE_END.finditer(text[start:end]):
        cut = start + match.start()
        if text[position:cut].strip():
            out.append((position, cut))
        position = start + match.end()
    if text[position:end].strip():
        out.append((position, end))
    return out


def _pack(
    text: str, pieces: list[tuple[int, int]], config: ChunkerConfig, path: tuple[str, ...]
) -> list[Chunk]:
    """Greedily pack consecutive pieces up to chunk_size tokens; oversized pieces become token windows.
    The next chunk starts with the previous chunk's last pieces holding up to chunk_overlap tokens."""
    size, overlap = config.chunk_size, config.chunk_overlap
    out: list[Chunk] = []
    current: list[tuple[int, int, int]] = []  # (start, end, tokens)

    def flush() -> None:
        if current:
            s, e = current[0][0], current[-1][1]
            out.append(Chunk(text[s:e].strip(), s, e, path))

    for s, e in pieces:
        n = _tokens(text, s, e)
        if n == 0:
            continue
        if n > size:
            flush()
            current.clear()
            out.extend(_windows(text, s, e, size, overlap, path))
            continue
        if current and sum(c[2] for c in current) + n > size:
            flush()
            kept: list[tuple[int, int, int]] = []
            total = 0
            for piece in reversed(current):
                if total + piece[2] > overlap or total + piece[2] + n > size:
                    break
                kept.insert(0, piece)
                total += piece[2]
            current[:] = kept
        current.append((s, e, n))
    flush()
    return out


def _recursive(text: str, config: ChunkerConfig) -> list[Chunk]:
    sections: list[tuple[int, int, tuple[str, ...]]] = []
    path: list[tuple[int, str]] = []
    position = 0
    current: tuple[str, ...] = ()
    for match in _HEADING.finditer(text):
        sections.append((position, match.start(), current))
        level = len(match.group(1))
        path = [(lvl, title) for lvl, title in path if lvl < level] + [(level, match.group(2).strip())]
        current = tuple(title for _, title in path)
        position = match.start()  # the heading line belongs to its section
    sections.append((position, len(text), current))
    out: list[Chunk] = []
    for start, end, heading in sections:
        if not text[start:end].strip():
            continue
        pieces: list[tuple[int, int]] = []
        cursor = start
        for match in _PARAGRAPH.finditer(text[start:end]):
            cut = start + match.start()
            pieces.extend(_paragraph(text, cursor, cut, config.chunk_size))
            cursor = start + match.end()
        pieces.extend(_paragraph(text, cursor, end, config.chunk_size))
        out.extend(_pack(text, pieces, config, heading))
    return [c for c in out if c.text]


def _paragraph(text: str, start: int, end: int, size: int) -> list[tuple[int, int]]:
    """A paragraph as one piece, or as its sentences when it is over ``size`` tokens."""
    if not text[start:end].strip():
        return []
    if _tokens(text, start, end) <= size:
        return [(start, end)]
    return _sentences(text, start, end)
