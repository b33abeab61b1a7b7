"""The knowledge service through the SDK, as users write it, on SQLite and PostgreSQL with embedded Chroma
and on SQLite with a real Chroma server: chunkers, progress, positions and token windows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sessionkit import InvalidArgument
from sessionkit_server.knowledge import chunking
from sessionkit_server.retrieval.tokens import EMBEDDABLE_TOKENS, count_tokens, token_spans
from tests.knowledge.support import session
from tests.servers import ServerThread


def test_chunkers_progress_and_config_errors(knowledge_server: ServerThread) -> None:
    s = session(
        knowledge_server,
        knowledge_config={"chunker": {"type": "token", "chunk_size": 20, "chunk_overlap": 5}},
    )
    events: list[dict[str, Any]] = []
    words = ["river", "stone", "cloud", "maple", "orbit"]  # one model token each
    result = s.add_knowledge(" ".join(words[n % 5] for n in range(100)), on_progress=events.append)
    assert result["source"]["chunker"] == {"type": "token", "chunk_size": 20, "chunk_overlap": 5}
    assert result["source"]["chunk_count"] == 7  # windows start every 15 tokens
    stages = [e["stage"] for e in events]
    assert "chunking" in stages and "embedding" in stages and "storing" in stages
    assert events[-1]["chunks_embedded"] == events[-1]["chunks_total"] == 7
    sentence = session(knowledge_server, knowledge_config={"chunker": {"type": "sentence", "chunk_size": 16}})
    many = " ".join(f"Sentence number {n} is short." for n in range(12))
    assert sentence.add_knowledge(many)["source"]["chunk_count"] >= 3
    with pytest.raises(InvalidArgument) as unknown:
        session(knowledge_server, knowledge_config={"chunker": {"type": "token"}, "colour": "blue"})
    assert "colour" in str(unknown.value)
    with pytest.raises(InvalidArgument) as unknown_type:
        session(knowledge_server, knowledge_config={"chunker": {"type": "paragraphs"}})
    assert "paragraphs" in str(unknown_type.value)
    semantic = session(
        knowledge_server, knowledge_config={"chunker": {"type": "semantic", "chunk_size": 200}}
    )
    cooking = [
        "Preheat the oven to two hundred degrees.",
        "Knead the bread dough for ten minutes.",
        "Let the dough rise until it doubles in size.",
        "Bake the loaf until the crust is golden brown.",
    ]
    space = [
        "The Andromeda galaxy is approaching the Milky Way.",
        "Telescopes reveal distant nebulae and star clusters.",
        "Astronomers measure the redshift of faraway galaxies.",
    ]
    made = semantic.add_knowledge(" ".join(cooking + space))
    assert made["source"]["chunker"]["type"] == "semantic"
    assert made["source"]["chunker"]["semantic_threshold"] == pytest.approx(0.25)
    texts = [h["text"] for h in semantic.search_knowledge("oven dough galaxy telescope", limit=10)]
    assert len(texts) >= 2
    assert not any("oven" in t and "galaxy" in t for t in texts), texts
    assert any(cooking[0] in t for t in texts) and any(space[0] in t for t in texts)
    with pytest.raises(InvalidArgument) as threshold:
        session(
            knowledge_server, knowledge_config={"chunker": {"type": "semantic", "semantic_threshold": 1.5}}
        ).add_knowledge("text")
    assert "semantic_threshold" in str(threshold.value)
    bad = session(
        knowledge_server,
        knowledge_config={"chunker": {"type": "token", "chunk_size": 16, "chunk_overlap": 16}},
    )
    with pytest.raises(InvalidArgument) as overlap:
        bad.add_knowledge("text")
    assert "chunk_overlap" in str(overlap.value)


def test_file_upload_reports_receiving_progress(knowledge_server: ServerThread, tmp_path: Path) -> None:
    # Big token windows: many upload chunks, few embeddings.
    s = session(knowledge_server, knowledge_config={"chunker": {"type": "token", "chunk_size": 8192}})
    path = tmp_path / "long.txt"
    path.write_text("Paragraph about glaciers and moraines.\n\n" * 20_000)  # ~800 KB: several upload chunks
    events: list[dict[str, Any]] = []
    result = s.add_knowledge(str(path), on_progress=events.append)
    received = [e["bytes_read"] for e in events if e["stage"] == "receiving"]
    assert received[-1] == path.stat().st_size and len(received) >= 3
    assert result["source"]["size_bytes"] == path.stat().st_size


def test_chunk_positions_and_heading_paths() -> None:
    text = "# A\n\nalpha beta.\n\n## B\n\ngamma delta.\n\n# C\n\nepsilon."
    chunks = chunking.split(text, chunking.ChunkerConfig(chunking.RECURSIVE, 16, 0))
    assert [c.heading_path for c in chunks] == [("A",), ("A", "B"), ("C",)]
    assert all(text[c.start : c.end].strip() == c.text for c in chunks)
    windows = chunking.split("a b c d e f g h", chunking.ChunkerConfig(chunking.TOKEN, 4, 2))
    assert [w.text for w in windows] == ["a b c d", "c d e f", "e f g h"]


def _document() -> str:
    """Markdown with rare words (several word pieces each), punctuation, accents and CJK, a word
    longer than WordPiece accepts, long and short paragraphs."""
    words = [
        "the",
        "tokenization",
        "of",
        "unbelievably",
        "microservices",
        "Kubernetes",
        "PostgreSQL",
        "café",
        "東京",
        "e-mail",
        "3.14",
    ]
    paragraphs = [
        " ".join(
            words[(n * 7 + k) % len(words)] + ("." if k % 9 == 8 else "") for k in range(n * 13 % 300 + 5)
        )
        for n in range(60)
    ]
    return (
        "# Guide\n\n"
        + "\n\n".join(paragraphs[:40])
        + "\n\n## Part\n\n"
        + "x" * 300
        + " "
        + "\n\n".join(paragraphs[40:])
    )


@pytest.mark.parametrize("strategy", [chunking.TOKEN, chunking.SENTENCE, chunking.RECURSIVE])
@pytest.mark.parametrize(("size", "overlap"), [(16, 4), (64, 0), (254, 31)])
def test_chunks_never_exceed_chunk_size_in_model_tokens(strategy: int, size: int, overlap: int) -> None:
    # Sizes are the embedding model's word pieces: "tokenization" is two, "東京" two, a 300-letter
    # word one ([UNK]); a chunk re-tokenized on its own never has more than chunk_size of them.
    text = _document()
    chunks = chunking.split(text, chunking.ChunkerConfig(strategy, size, overlap))
    assert chunks
    assert max(count_tokens(c.text) for c in chunks) <= size
    assert all(text[c.start : c.end].strip() == c.text for c in chunks)
    # Every token of the text is in some chunk (nothing dropped between windows or pieces).
    starts = sorted({c.start + s for c in chunks for s, _ in token_spans(text[c.start : c.end])})
    assert starts == [s for s, _ in token_spans(text)]


def test_token_windows_start_and_end_between_words() -> None:
    # "unbelievably" is several word pieces: windows never cut it, so no chunk starts with "##" pieces.
    text = " ".join(["unbelievably"] * 50)
    pieces = count_tokens("unbelievably")
    assert pieces > 1
    windows = chunking.split(text, chunking.ChunkerConfig(chunking.TOKEN, 16, 5))
    assert all(set(w.text.split()) == {"unbelievably"} for w in windows)
    assert all(count_tokens(w.text) <= 16 for w in windows)
    # A word longer than a window (17 pieces, windows of 16) is cut inside, the only way forward.
    word = "Pneumonoultramicroscopicsilicovolcanoconiosis"
    cut = chunking.split(word, chunking.ChunkerConfig(chunking.TOKEN, 16, 0))
    assert len(cut) == 2 and "".join(w.text for w in cut) == word


def test_default_chunk_size_is_what_the_model_embeds() -> None:
    config = chunking.chunker_config(0, 0, None)
    assert config.chunk_size == EMBEDDABLE_TOKENS == 254
    assert config.chunk_overlap == 254 // 8
