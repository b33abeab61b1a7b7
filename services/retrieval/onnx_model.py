"""all-MiniLM-L6-v2 (or any sentence-transformers model of the same shape) on ONNX Runtime.

The torch path of :mod:`sessionkit_server.retrieval.embeddings` spends most of a short query's time in
torch's per-operator dispatch, not in arithmetic: ONNX Runtime runs the same weights as one fused graph,
about 2x faster for one query on this machine (docs/BENCHMARKS.md, Agent section), and loads in well
under a second without importing torch or transformers.

The graph is exported once from the installed model (torch.onnx, the transformer's last hidden state)
into a cache directory (``SESSIONKIT_EMBEDDING_CACHE_DIR``, default ``$XDG_CACHE_HOME/sessionkit`` or
``~/.cache/sessionkit``), keyed by the model files' names, sizes and modification times, so a changed
model is exported again; the file is written under a temporary name and renamed, so a crash or two
processes exporting at once never leave a half-written model. Tokenization uses the model's own
``tokenizer.json`` (the ``tokenizers`` package), mean pooling over the attention mask and
normalization run in numpy: the vectors equal the torch path's (cosine > 0.99999 on real text,
tests/memory/test_onnx_embedder.py), so the embedder keeps its name and stored vectors stay valid.

Only the plain layout is supported: a BERT-like transformer, mean pooling, optional normalization,
and a ``tokenizer.json``. :func:`supported` says whether a model directory has it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnxruntime
    from tokenizers import Tokenizer

log = logging.getLogger("sessionkit.embeddings")

#: Bumped when the export changes in a way that changes the file (a new key, a fresh export).
EXPORT_VERSION = 1
#: Texts per ONNX run: sorted by length first, so a batch pads to similar lengths.
RUN_BATCH = 32
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def cache_root() -> Path:
    """SESSIONKIT_EMBEDDING_CACHE_DIR, else $XDG_CACHE_HOME/sessionkit, else ~/.cache/sessionkit."""
    configured = os.environ.get("SESSIONKIT_EMBEDDING_CACHE_DIR", "")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "sessionkit"


def supported(model_dir: Path) -> str:
    """ "" when ``model_dir`` has the layout this runtime handles, else why not."""
    if not (model_dir / "tokenizer.json").is_file():
        return "no tokenizer.json"
    if not (model_dir / "config.json").is_file():
        return "no config.json"
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return ""  # a bare transformer: sentence-transformers pools it by the mean
    try:
        modules = json.loads(modules_file.read_text())
        kinds = [str(m["type"]).rsplit(".", 1)[-1] for m in modules]
    except (ValueError, KeyError, TypeError) as error:
        return f"unreadable modules.json: {error}"
    if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Normalize" for k in kinds[2:]):
        return f"modules {kinds} (only Transformer, Pooling, Normalize)"
    pooling = modules[1].get("path", "1_Pooling")
    try:
        config = json.loads((model_dir / pooling / "config.json").read_text())
    except (OSError, ValueError) as error:
        return f"unreadable pooling config: {error}"
    modes = [k for k, v in config.items() if k.startswith("pooling_mode") and v]
    if modes != ["pooling_mode_mean_tokens"]:
        return f"pooling {modes} (only the mean)"
    return ""


def _max_length(model_dir: Path) -> int:
    """The sentence-transformers max_seq_length (256 for all-MiniLM-L6-v2), else the model's limit."""
    try:
        value = json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
        return int(value)
    except (OSError, ValueError, KeyError, TypeError):
        config = json.loads((model_dir / "config.json").read_text())
        return int(config.get("max_position_embeddings", 512))


def export_key(model_dir: Path) -> str:
    """Changes when any file of the model changes (name, size, modification time) or the export does."""
    digest = hashlib.sha256(f"{EXPORT_VERSION}\0{model_dir}".encode())
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"\0{path.relative_to(model_dir)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def exported_path(model_dir: Path) -> Path:
    return cache_root() / "onnx" / f"{model_dir.name}-{export_key(model_dir)}" / "model.onnx"


def export(model_dir: Path, target: Path) -> None:
    """Export the transformer of ``model_dir`` to ``target`` (atomically: written aside, then renamed)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    # The eager attention traces to plain operators that ONNX Runtime fuses; sdpa's tracing specializes
    # on the example's shapes.
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True, attn_implementation="eager")
    model.eval()

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    example = torch.ones(2, 8, dtype=torch.long)
    axes = {name: {0: "batch", 1: "tokens"} for name in (*_INPUTS, "last_hidden_state")}
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".export-", suffix=".onnx")
    os.close(fd)
    try:
        # The tracer warns about Python conditions it folds (shapes, the absent cache): all hold for
        # every input of this model, and the warnings would only fill a server's log.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                LastHiddenState(),
                (example, example, torch.zeros_like(example)),
                temporary,
                input_names=list(_INPUTS),
                output_names=["last_hidden_state"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


class OnnxModel:
    """One loaded model: tokenizer plus ONNX Runtime session. ``encode`` is called from one thread."""

    def __init__(self, model_dir: Path, threads: int) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        path = exported_path(model_dir)
        if not path.is_file():
            log.info("exporting %s to ONNX at %s (once)", model_dir, path)
            export(model_dir, path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads wait for each other on a busy machine (the torch path's 10x lesson).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session: onnxruntime.InferenceSession = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = {i.name for i in self.session.get_inputs()}
        tokenizer: Tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tokenizer.enable_truncation(_max_length(model_dir))
        tokenizer.no_padding()  # padded per run batch, below
        self.tokenizer = tokenizer
        self.pad_id = int(tokenizer.token_to_id("[PAD]") or 0)
        self.path = path
        self.dimension = int(json.loads((model_dir / "config.json").read_text())["hidden_size"])

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text, in order."""
        encodings = self.tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda n: len(encodings[n].ids))
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(order), RUN_BATCH):
            chosen = order[start : start + RUN_BATCH]
            width = max(1, max(len(encodings[n].ids) for n in chosen))
            ids = np.full((len(chosen), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(chosen), width), dtype=np.int64)
            types = np.zeros((len(chosen), width), dtype=np.int64)
            for row, n in enumerate(chosen):
                e = encodings[n]
                ids[row, : len(e.ids)] = e.ids
                mask[row, : len(e.ids)] = e.attention_mask
                types[row, : len(e.ids)] = e.type_ids
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            (hidden,) = self.session.run(None, {k: v for k, v in feeds.items() if k in self.inputs})
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            norms[norms == 0] = 1.0
            out[chosen] = pooled / norms
        return out
