"""The ONNX Runtime path of LocalEmbedder (sessionkit_server.retrieval.onnx_model): the same
all-MiniLM-L6-v2 weights, exported once from the installed package, give the torch path's vectors, so
vectors stored by either stay valid for queries of the other (the embedder's name does not change)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sessionkit.errors import FailedPrecondition, InvalidArgument
from sessionkit_server.retrieval import embeddings, onnx_model
from sessionkit_server.retrieval.embeddings import LocalEmbedder, default_model_path, embedder_from_config

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[2]


def real_texts() -> list[str]:
    """Sentences and paragraphs as users store them: the README's lines (short and long, code and
    prose), a text beyond the model's 256 tokens (truncated alike), one word, and an empty text."""
    lines = [line.strip() for line in (ROOT / "README.md").read_text().splitlines() if line.strip()]
    return [*lines[:40], " ".join(lines[:60]), "hello", ""]


async def test_onnx_and_torch_give_the_same_vectors() -> None:
    onnx, torch = LocalEmbedder(runtime="onnx"), LocalEmbedder(runtime="torch")
    texts = real_texts()
    a = np.asarray(await onnx.embed(texts))
    b = np.asarray(await torch.embed(texts))
    assert onnx.name == torch.name == "all-MiniLM-L6-v2"  # same vectors: same identity
    assert onnx.dimension == torch.dimension == 384
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    cosines = (a * b).sum(axis=1)
    assert cosines.min() > 0.9999, (cosines.argmin(), cosines.min())
    # One text alone (no padding) equals the same text inside a padded batch.
    alone = np.asarray(await onnx.embed_one(texts[3]))
    assert float(alone @ a[3]) > 0.99999


async def test_the_export_is_cached_and_keyed_by_the_model_files(tmp_path: Path) -> None:
    await LocalEmbedder(runtime="onnx").warm_up()
    model = default_model_path()
    assert onnx_model.exported_path(model).is_file()
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (copy / name).write_bytes((model / name).read_bytes())
    key = onnx_model.export_key(copy)
    (copy / "config.json").write_text((model / "config.json").read_text() + "\n")
    assert onnx_model.export_key(copy) != key  # a changed model is exported again


def test_unsupported_layouts_are_named(tmp_path: Path) -> None:
    assert onnx_model.supported(default_model_path()) == ""
    (tmp_path / "config.json").write_text("{}")
    assert onnx_model.supported(tmp_path) == "no tokenizer.json"
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "modules.json").write_text(
        '[{"type": "sentence_transformers.models.Transformer"}, {"type": "x.Dense"}]'
    )
    assert "only Transformer, Pooling, Normalize" in onnx_model.supported(tmp_path)


async def test_auto_falls_back_to_torch_without_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embeddings, "_models", {})
    monkeypatch.setattr(embeddings, "_onnx_installed", lambda: False)
    embedder = LocalEmbedder(runtime="auto")
    await embedder.warm_up()
    assert embeddings._models[("auto", str(embedder.path))].runtime == "torch"
    assert embedder.dimension == 384


async def test_onnx_runtime_on_a_model_it_cannot_run_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    embedder = LocalEmbedder(tmp_path, runtime="onnx")
    with pytest.raises(FailedPrecondition) as caught:
        await embedder.embed_one("x")
    assert caught.value.reason == "EMBEDDING_MODEL_UNAVAILABLE"
    assert "no tokenizer.json" in str(caught.value)


def test_bad_runtime_settings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidArgument, match="runtime"):
        embedder_from_config({"runtime": "gpu"})
    with pytest.raises(InvalidArgument, match="runtime"):
        embedder_from_config({"provider": "openai", "model": "m", "runtime": "onnx"})
    monkeypatch.setenv("SESSIONKIT_EMBEDDING_RUNTIME", "tpu")
    with pytest.raises(InvalidArgument, match="SESSIONKIT_EMBEDDING_RUNTIME"):
        LocalEmbedder()
