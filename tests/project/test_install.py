"""The two distributions as users install them: both wheels built from this checkout, each install in a
fresh virtualenv of its own (dependencies from the package registry, through a pip cache kept in
~/.cache/sessionkit-tests so reruns download nothing), then used from that virtualenv only.

- the SDK alone (``pip install sessionkit``): none of the server's heavy stack is importable, and a
  Session in that virtualenv uses state, memory search and an agent chat on a server running from the
  full install (this test process); ``sessionkit state get --address`` works; ``sessionkit serve`` and
  the embedded mode say to install 'sessionkit-server[all]'.
- the server with the state extra only (``pip install 'sessionkit-server[state]'``): no model stack,
  ``sessionkit serve --service state`` serves a round trip, ``--service memory`` fails at once naming
  'sessionkit-server[memory]'.

Measured on this 2-core machine (shared, load ~6): both wheels ~3 s; with a warm pip cache the SDK
venv installs in ~5 s and the state venv in ~8 s, and the two tests take ~45 s in all (the full
server's model load and the agent turn dominate the first); with an empty cache ~2 min.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sessionkit_server.common.config import ServerSettings
from tests.conftest import free_port
from tests.llm_server import LLMServer, llm_server_fixture  # noqa: F401 - the llm_server fixture
from tests.servers import ROOT, ChildProcess, ServerThread, wait_serving

pytestmark = pytest.mark.slow

#: What `pip install sessionkit` must not bring: the model stack, the database layer, the web framework.
SERVER_ONLY = ("torch", "chromadb", "sentence_transformers", "sqlalchemy", "fastapi", "llama_cpp")
#: What the state extra must not bring (it has the SQL stores, so SQLAlchemy is expected there).
NOT_IN_STATE = ("torch", "chromadb", "sentence_transformers", "fastapi", "llama_cpp")
MODEL = "install-test-model"
INSTALL_TIMEOUT = 900


def _cache_root() -> Path:
    return Path(os.environ.get("SESSIONKIT_TEST_CACHE", Path.home() / ".cache" / "sessionkit-tests"))


@dataclass(frozen=True)
class Wheels:
    sdk: Path
    server: Path


def _top_level(wheel: Path) -> set[str]:
    """The top-level import names a wheel installs (its paths' first parts, metadata aside)."""
    names = zipfile.ZipFile(wheel).namelist()
    return {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith((".dist-info", ".data"))}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Wheels:
    """Both wheels, built from a copy of the checkout: setuptools writes build/ and *.egg-info next to
    the sources, which must not land in the working tree (nor stale ones get into the wheel)."""
    work = tmp_path_factory.mktemp("wheels")
    src, dist = work / "src", work / "dist"
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", ".mypy_cache")
    shutil.copytree(ROOT / "sdk", src / "sdk", ignore=junk)
    shutil.copytree(ROOT / "services", src / "services", ignore=junk)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    assert list((src / "sdk" / "sessionkit" / "v1").glob("*_pb2.py")), "generated stubs missing: make protos"
    for project in (src / "sdk", src):
        # No build isolation: the dev environment has setuptools (the build requirement), and an isolated
        # build would fetch it from the registry on every run.
        done = subprocess.run(
            [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(project)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"building {project.name or 'the server'}:\n{done.stdout[-3000:]}"
    sdk = next(dist.glob("sessionkit-*.whl"))
    server = next(dist.glob("sessionkit_server-*.whl"))
    # The SDK installs `sessionkit` only, and the server its own name: no bare top-level `services`.
    assert _top_level(sdk) == {"sessionkit"}
    assert _top_level(server) == {"sessionkit_server"}
    return Wheels(sdk, server)


def make_venv(path: Path, *requirements: str) -> Path:
    """A fresh virtualenv at ``path`` with ``requirements`` installed (from the registry, through the
    shared pip cache); its interpreter. The venv gets no pip of its own: this process's pip installs
    into it (``pip --python``), which saves seeding one per run."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    started = time.monotonic()
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--disable-pip-version-check",
         "--quiet", "--no-compile", "--cache-dir", str(_cache_root() / "pip"), *requirements],
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=user_env(),
    )  # fmt: skip
    if install.returncode != 0:
        pytest.fail(f"pip install {' '.join(requirements)} failed:\n{install.stderr[-4000:]}")
    print(f"{path.name}: installed in {time.monotonic() - started:.1f}s")
    return python


def user_env(**extra: str) -> dict[str, str]:
    """A user's environment: nothing that points Python at this checkout (PYTHONPATH) and no
    SESSIONKIT_* setting of the test run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONKIT_", "PYTHON", "VIRTUAL_ENV"))}
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


def run(args: list[str | Path], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=user_env(), capture_output=True, text=True, timeout=timeout
    )


def result(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The JSON a script printed on its ``RESULT`` line (it must exit 0)."""
    assert done.returncode == 0, done.stderr[-4000:]
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, done.stdout + done.stderr
    parsed: dict[str, object] = json.loads(line.removeprefix("RESULT "))
    return parsed


#: Where the SDK comes from, and which of ``argv[1:]`` can be imported (find_spec: nothing is imported).
IMPORTABLE = """
import importlib.util, json, sys
import sessionkit
print("RESULT " + json.dumps({
    "sessionkit": sessionkit.__file__,
    "prefix": sys.prefix,
    "importable": [name for name in sys.argv[1:] if importlib.util.find_spec(name) is not None],
}))
"""

CLIENT = """
import json, sys
from sessionkit import Session

address = sys.argv[1]
out = {}
s = Session("install-check", user_id="u1", address=address, timeout=120)
s.set_state("plan", {"tier": "pro", "seats": 3})
out["state"] = Session("install-check", user_id="u1", address=address).get_state("plan")
s.store_long_memory("Penguins huddle together to survive Antarctic winters")
s.store_long_memory("The quarterly invoice is due on the first Monday of March")
hits = s.search_memory("how do birds keep warm", memory_type="long", limit=1)
out["search"] = [hit["text"] for hit in hits]
agent = s.Agent(name="Helper", instructions="Answer briefly.")
out["chat"] = agent.chat("Is anyone there?")
print("RESULT " + json.dumps(out))
"""

EMBEDDED = """
import json
from sessionkit import Session

try:
    Session("x").set_state("k", 1)
    out = {"error": None}
except Exception as error:
    out = {"error": type(error).__name__, "message": str(error)}
print("RESULT " + json.dumps(out))
"""


def check_installed_from(python: Path, venv: Path, modules: tuple[str, ...], cwd: Path) -> list[object]:
    """Asserts the SDK imported by ``python`` is the venv's own; the ``modules`` importable there."""
    found = result(run([python, "-c", IMPORTABLE, *modules], cwd))
    assert Path(str(found["prefix"])) == venv
    assert Path(str(found["sessionkit"])).is_relative_to(venv), found
    importable = found["importable"]
    assert isinstance(importable, list)
    return importable


@pytest.fixture
def full_server(tmp_path: Path, llm_server: LLMServer) -> Iterator[ServerThread]:
    """Every service from the full (development) install, its agent on the scripted LLM."""
    settings = ServerSettings(
        port=0,
        data_dir=tmp_path / "server-data",
        log_format="text",
        llm_base_url=llm_server.base_url,
        llm_model=MODEL,
        llm_api_key="sk-test",
    )
    thread = ServerThread(settings).start()
    yield thread
    thread.stop()


def test_the_sdk_alone_installs_light_and_talks_to_a_full_server(
    wheels: Wheels, tmp_path: Path, full_server: ServerThread, llm_server: LLMServer
) -> None:
    venv = tmp_path / "sdk-venv"
    python = make_venv(venv, str(wheels.sdk))
    work = tmp_path / "app"
    work.mkdir()
    assert check_installed_from(python, venv, (*SERVER_ONLY, "sessionkit_server", "services"), work) == []

    llm_server.reply("Yes, I am here.")
    out = result(run([python, "-c", CLIENT, full_server.address], work, timeout=300))
    assert out["state"] == {"tier": "pro", "seats": 3}
    assert out["search"] == ["Penguins huddle together to survive Antarctic winters"]
    assert out["chat"] == "Yes, I am here."
    assert llm_server.chat_requests[-1].messages[-1]["content"] == "Is anyone there?"

    # The CLI's client commands work with the SDK alone.
    got = run([venv / "bin" / "sessionkit", "state", "get", "install-check", "plan", "--user", "u1",
               "--address", full_server.address], work)  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == {"tier": "pro", "seats": 3}

    # What needs the server says what to install, in one line, without a traceback.
    serve = run([venv / "bin" / "sessionkit", "serve", "--port", "0"], work, timeout=60)
    assert serve.returncode == 2, serve.stdout + serve.stderr
    assert "Traceback" not in serve.stderr
    assert "pip install 'sessionkit-server[all]'" in serve.stderr, serve.stderr
    embedded = result(run([python, "-c", EMBEDDED], work, timeout=60))
    assert embedded["error"] == "ServiceUnavailable", embedded
    assert "pip install 'sessionkit-server[all]'" in str(embedded["message"])
    assert not (work / ".sessionkit").exists(), "the failed embedded start left a data directory"


ROUND_TRIP = """
import json, sys
from sessionkit import Session

s = Session("state-only", user_id="u1", address=sys.argv[1], timeout=60)
s.set_state("counter", 1)
s.increment_state("counter", 41)
print("RESULT " + json.dumps({"state": s.restore_state()}))
"""


def test_the_state_extra_alone_serves_state_and_names_the_missing_extras(
    wheels: Wheels, tmp_path: Path
) -> None:
    venv = tmp_path / "state-venv"
    python = make_venv(venv, str(wheels.sdk), f"{wheels.server}[state]")
    work = tmp_path / "srv"
    work.mkdir()
    importable = check_installed_from(python, venv, (*NOT_IN_STATE, "sqlalchemy", "sessionkit_server"), work)
    assert importable == ["sqlalchemy", "sessionkit_server"]

    port = free_port()
    serve: list[str | Path] = [
        venv / "bin" / "sessionkit",
        "serve",
        "--service",
        "state",
        "--port",
        str(port),
    ]
    with ChildProcess(
        [str(a) for a in serve], tmp_path / "serve-state.log", cwd=work, env=user_env()
    ) as server:
        try:
            wait_serving(f"127.0.0.1:{port}", timeout=60, child=server)
        except TimeoutError as error:
            raise AssertionError(f"{error}\n{server.log()[-3000:]}") from None
        out = result(run([python, "-c", ROUND_TRIP, f"127.0.0.1:{port}"], work))
        assert out["state"] == {"counter": 42}
        assert server.stop() == 0, server.log()
    log = server.log()
    assert "Traceback" not in log, log
    # No gateway extra: the default gateway is skipped, saying how to add it.
    assert "pip install 'sessionkit-server[gateway]'" in log, log

    started = time.monotonic()
    memory = run([serve[0], "serve", "--service", "memory", "--port", "0"], work, timeout=60)
    took = time.monotonic() - started
    assert memory.returncode == 2, memory.stdout + memory.stderr
    assert "Traceback" not in memory.stderr
    assert "pip install 'sessionkit-server[memory]'" in memory.stderr, memory.stderr
    assert took < 20, f"serve --service memory took {took:.1f}s to refuse"
