"""Node.js tooling for tests: clients/node's dependencies (the Node client's @grpc packages and
the buf binary, @bufbuild/buf) installed from its package-lock.json, as CI's `make node-deps` does."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "clients" / "node"
NODE = shutil.which("node")
NPM = shutil.which("npm")

#: Skips a module when Node.js is missing (it is a development tool here, not a runtime dependency).
needs_node = pytest.mark.skipif(
    NODE is None or NPM is None,
    reason="node and npm not found on PATH: the Node.js client and buf checks need Node.js 20 and npm",
)


def node_modules() -> Path:
    """clients/node/node_modules, installed with `npm ci` first when missing or older than the lock
    file (npm writes node_modules/.package-lock.json on every install)."""
    assert NPM is not None
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        done = subprocess.run(
            [NPM, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, f"npm ci in {NODE_DIR} failed:\n{done.stdout}\n{done.stderr}"
    return NODE_DIR / "node_modules"


def buf() -> str:
    """The buf binary shipped in the @bufbuild/buf npm package."""
    return str(node_modules() / ".bin" / "buf")
