"""Cold start: the embedded server's first state call must not wait for the vector store's or the
model's imports (bench/cold_start.py measures it; chromadb alone took over a second to import)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What a server importing its services (every one) may not import before a memory or knowledge call.
HEAVY = ("chromadb", "torch", "sentence_transformers", "transformers")


def test_server_start_imports_no_vector_store_or_model() -> None:
    code = (
        "import sys\n"
        "import sessionkit_server.server, sessionkit_server.memory.grpc_servicer\n"
        "import sessionkit_server.knowledge.grpc_servicer, sessionkit_server.state.grpc_servicer\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": f"{ROOT / 'sdk'}:{ROOT}", "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "", f"imported at server start: {out.stdout.strip()}"
