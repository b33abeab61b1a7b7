"""sessionkit_server.retrieval.tokens: the packaged all-MiniLM-L6-v2 tokenizer, offline, no truncation."""

from __future__ import annotations

from pathlib import Path

import pytest

from sessionkit.errors import FailedPrecondition
from sessionkit_server.retrieval import tokens
from sessionkit_server.retrieval.tokens import (
    EMBEDDABLE_TOKENS,
    PIECE_CHARS,
    count_tokens,
    load_tokenizer,
    model_max_sequence,
    token_offsets,
    token_spans,
)


def pieces_of(text: str) -> list[str]:
    return [text[s:e] for s, e in token_spans(text)]


def test_word_pieces_of_the_embedding_model_without_special_tokens() -> None:
    # WordPiece splits rare words and punctuation; [CLS]/[SEP] are not counted.
    assert pieces_of("Hello, world! Tokenization") == ["Hello", ",", "world", "!", "Token", "ization"]
    assert count_tokens("Hello, world! Tokenization") == 6
    assert count_tokens("") == 0
    assert token_spans("") == []
    assert token_spans("   \n\t ") == []


def test_spans_are_offsets_into_the_original_text() -> None:
    # Accents, CJK and characters outside the BMP: offsets are Python string indices, not bytes.
    text = "Café 東京 😀 naïve"
    spans = token_spans(text)
    assert [text[s:e] for s, e in spans] == ["Café", "東", "京", "😀", "naïve"]


def test_long_texts_are_not_truncated_and_match_a_single_encode() -> None:
    paragraph = "Retrieval-augmented generation grounds answers in documents.\nIt embeds chunks; "
    repeats = 3 * PIECE_CHARS // len(paragraph) + 7  # several internal pieces
    text = paragraph * repeats
    per_paragraph = count_tokens(paragraph)
    # The packaged tokenizer.json truncates at 128; counting must not.
    assert count_tokens(text) == per_paragraph * repeats > 128
    spans = token_spans(text)
    assert len(spans) == per_paragraph * repeats
    first = token_spans(paragraph)
    k = repeats - 1  # the last repeat: shifted copies of the first one's spans
    assert spans[k * per_paragraph :] == [(s + k * len(paragraph), e + k * len(paragraph)) for s, e in first]
    offsets = token_offsets(text)
    assert offsets.shape == (len(spans), 2)
    assert [tuple(row) for row in offsets.tolist()] == spans


def test_a_word_longer_than_a_piece_is_not_split() -> None:
    # A single "word" longer than the piece size with no separator: one [UNK] span covering it
    # (WordPiece gives up on words over 100 characters), never two halves.
    word = "x" * (PIECE_CHARS + 50)
    text = f"start {word} end"
    assert pieces_of(text) == ["start", word, "end"]


def test_only_real_separators_cut_pieces() -> None:
    # The normalizer deletes control characters, so "a\x1cb" is one word; a cut there would make two.
    text = ("a" * (PIECE_CHARS - 1)) + "\x1c" + "b" * 10 + " tail"
    assert count_tokens(text) == len(pieces_of(text))
    assert pieces_of(text)[-1] == "tail"


def test_embeddable_tokens_follow_the_model_configuration() -> None:
    assert model_max_sequence() == tokens.MODEL_MAX_SEQUENCE
    assert model_max_sequence() - 2 == EMBEDDABLE_TOKENS  # [CLS] and [SEP]


def test_the_tokenizer_is_loaded_once_per_process() -> None:
    assert load_tokenizer() is load_tokenizer()


def test_a_missing_tokenizer_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="not available: loading its tokenizer") as caught:
        load_tokenizer(f"{tmp_path}/nowhere/tokenizer.json")
    assert caught.value.reason == "EMBEDDING_MODEL_UNAVAILABLE"
