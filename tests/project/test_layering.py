"""The package layering, read from the imports (ast) of every module:

- no service package (state, memory, knowledge, agent, gateway) imports another: shared code lives in
  sessionkit_server.common or sessionkit_server.retrieval, and a service reaches another only through
  its gRPC client (the SDK's clients);
- the shared layers import no service;
- the SDK (sdk/sessionkit) imports nothing from sessionkit_server.

services/server.py, services/local.py, services/cli_serve.py and services/cli_migrate.py are the
composition roots: they may import every service."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "services"
SDK = ROOT / "sdk" / "sessionkit"
SERVICES = ("state", "memory", "knowledge", "agent", "gateway")
SHARED = ("common", "retrieval")
COMPOSITION_ROOTS = ("server.py", "local.py", "cli_serve.py", "cli_migrate.py")


def imported_modules(path: Path, root: Path, name: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import of a file of package ``name`` (in ``root``), lazy
    ones inside functions included."""
    package = ".".join((name, *path.relative_to(root).parent.parts))
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if "." in module:
                yield node.lineno, module
            else:  # "from sessionkit_server import memory": the names are the modules
                for alias in node.names:
                    yield node.lineno, f"{module}.{alias.name}"


def _part(module: str) -> str | None:
    """The server package a module belongs to (state, memory, common...), or None."""
    parts = module.split(".")
    if parts[0] in ("sessionkit_server", "services") and len(parts) > 1:
        return parts[1]
    return None


def layering_violations(server: Path, sdk: Path) -> list[str]:
    problems: list[str] = []
    for path in sorted(server.rglob("*.py")):
        relative = path.relative_to(server)
        if len(relative.parts) == 1 and relative.name in COMPOSITION_ROOTS:
            continue
        own = relative.parts[0] if len(relative.parts) > 1 else None
        for line, module in imported_modules(path, server, "sessionkit_server"):
            if module.split(".")[0] == "services":
                problems.append(f"{path}:{line} imports {module!r}: use the package name sessionkit_server")
                continue
            other = _part(module)
            if other is None or other == own:
                continue
            if own in SERVICES and other in SERVICES:
                problems.append(
                    f"{path}:{line} imports {module!r}: the {own} service may not import the {other} "
                    "service (move shared code to sessionkit_server.common or .retrieval, or call it "
                    "through its gRPC client)"
                )
            elif own in SHARED and other in SERVICES:
                problems.append(f"{path}:{line} imports {module!r}: a shared layer ({own}) imports a service")
    for path in sorted(sdk.rglob("*.py")):
        if "v1" in path.relative_to(sdk).parts:
            continue  # generated stubs
        for line, module in imported_modules(path, sdk, "sessionkit"):
            if module.split(".")[0] in ("sessionkit_server", "services"):
                problems.append(f"{path}:{line} imports {module!r}: the SDK imports no server code")
    return problems


def test_no_service_imports_another_and_the_sdk_imports_no_server_code() -> None:
    assert layering_violations(SERVER, SDK) == []


@pytest.mark.parametrize(
    ("where", "source", "expected"),
    [
        (
            "knowledge/store.py",
            "from sessionkit_server.memory.store import Owner\n",
            "the knowledge service may not import the memory service",
        ),
        (
            "agent/llm.py",
            "def f():\n    import sessionkit_server.memory.extraction\n",
            "the agent service may not import the memory service",
        ),
        (
            "memory/service.py",
            "from ..state import service\n",
            "the memory service may not import the state service",
        ),
        (
            "gateway/app.py",
            "from sessionkit_server import agent\n",
            "the gateway service may not import the agent service",
        ),
        (
            "common/db.py",
            "from sessionkit_server.state.store import SessionKey\n",
            "a shared layer (common) imports a service",
        ),
        ("memory/store.py", "from services.common import db\n", "use the package name sessionkit_server"),
    ],
)
def test_the_check_names_each_kind_of_offending_import(
    tmp_path: Path, where: str, source: str, expected: str
) -> None:
    server, sdk = tmp_path / "services", tmp_path / "sdk"
    (server / where).parent.mkdir(parents=True)
    (server / where).write_text(source)
    (server / "server.py").write_text("from sessionkit_server.memory.service import MemoryService\n")
    sdk.mkdir()
    (sdk / "cli.py").write_text("import sessionkit_server.cli_serve\n")
    problems = layering_violations(server, sdk)
    assert len(problems) == 2, problems  # server.py, a composition root, is allowed
    assert expected in problems[0] and where in problems[0]
    assert "the SDK imports no server code" in problems[1] and "sessionkit_server.cli_serve" in problems[1]
