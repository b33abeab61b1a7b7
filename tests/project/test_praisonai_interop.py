"""The real PraisonAI client against our gateway: ``praisonaiagents`` from PyPI, installed in a virtualenv
of its own (cached across runs: ~/.cache/sessionkit-tests, keyed by version and Python), runs its
``Session(agent_url=...)`` remote mode against a live gateway with real services and a scripted LLM.

What praisonaiagents (PRAISONAI_VERSION) does on the wire, read from its session/api.py:
- the constructor checks the connection: ``GET <agent_url>/health`` (so ``/agent/health``, which the
  gateway serves as an alias of /health), and when that is not 200, ``HEAD <agent_url>``, accepting 200
  or 405 (the gateway answers 405); anything else raises ConnectionError. It has
  no public ``test_remote_connection()`` (the check is ``_test_remote_connection()``, returning None).
- ``chat()``/``send_message()`` POST the legacy body ``{"query", "session_id", "user_id", **kwargs}``
  (user_id "default_user" when none is given) and return the answer's ``response``.
- it sends no API key (its Session has no api_key parameter), so it needs a gateway with auth off.

curl and a plain ``requests`` client of the documented protocol: tests/gateway/test_gateway_cli.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.gateway.test_gateway_support import GatewayThread, gateway_settings
from tests.llm_server import LLMServer
from tests.sdk.remote_support import FaultyProxy, module_llm, services  # noqa: F401 - fixtures
from tests.servers import ServerThread

pytestmark = pytest.mark.slow

#: Verified here: installs in ~30 s (about 40 packages, all wheels) on Python 3.11.
PRAISONAI_VERSION = "1.7.17"

CLIENT_SCRIPT = """
import json, sys
from praisonaiagents import Session

url, no_health_url, bad_url = sys.argv[1], sys.argv[2], sys.argv[3]
out = {}
session = Session(session_id="praison_remote", user_id="praison_user", agent_url=url)
out["is_remote"] = session.is_remote
out["public_test_remote_connection"] = hasattr(session, "test_remote_connection")
session._test_remote_connection()  # raises ConnectionError when it fails
out["chat"] = session.chat("Hello from PraisonAI")
out["send_message"] = session.send_message("Again, via send_message")
no_ids = Session(agent_url=url)
out["default_ids_chat"] = no_ids.chat("Who am I?")
out["default_ids"] = [no_ids.session_id, no_ids.user_id]
# A server without <agent_url>/health: PraisonAI falls back to HEAD <agent_url> (200 or 405 accepted).
Session(agent_url=no_health_url)
try:
    Session(agent_url=bad_url, timeout=5)
    out["unreachable"] = "no error"
except ConnectionError as error:
    out["unreachable"] = "ConnectionError: " + str(error)
print("RESULT " + json.dumps(out))
"""


def _cache_root() -> Path:
    return Path(os.environ.get("SESSIONKIT_TEST_CACHE", Path.home() / ".cache" / "sessionkit-tests"))


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@pytest.fixture(scope="module")
def praisonai_python() -> Path:
    """The interpreter of a virtualenv with praisonaiagents==PRAISONAI_VERSION. Built once and kept:
    built in a scratch directory and renamed into place when complete, so a run that is interrupted, or
    two runs at once, never leave a half-installed cache behind (only ``bin/python`` is used, which keeps
    working after the rename)."""
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    venv = _cache_root() / f"praisonai-venv-{PRAISONAI_VERSION}-{tag}"
    marker = venv / "sessionkit-installed"
    if marker.exists():
        return _venv_python(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    scratch = venv.parent / f".building-{uuid.uuid4().hex}"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(scratch)], check=True, timeout=300)
        started = time.monotonic()
        install = subprocess.run(
            [
                str(_venv_python(scratch)),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--quiet",
                f"praisonaiagents=={PRAISONAI_VERSION}",
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if install.returncode != 0:
            pytest.fail(
                f"pip install praisonaiagents=={PRAISONAI_VERSION} failed (needs the package registry):\n"
                f"{install.stdout[-2000:]}\n{install.stderr[-4000:]}"
            )
        (scratch / "sessionkit-installed").write_text(f"installed in {time.monotonic() - started:.0f}s\n")
        try:
            scratch.rename(venv)
        except OSError:
            if not marker.exists():  # not another run's finished venv: something else is wrong
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return _venv_python(venv)


@pytest.fixture(scope="module")
def gateway(services: ServerThread) -> Iterator[GatewayThread]:  # noqa: F811 - uses the imported fixture
    thread = GatewayThread(gateway_settings(), services.address).start()
    yield thread
    thread.stop()


def test_praisonai_session_in_remote_mode(
    praisonai_python: Path,
    gateway: GatewayThread,
    module_llm: LLMServer,  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> None:
    assert module_llm.pending == 0
    module_llm.requests.clear()
    module_llm.script("Hello from sessionkit!", "Second answer.", "You are the default user.")
    # Recorded on the way, so the test states what praisonaiagents actually sends. The second proxy
    # hides the health routes, to see PraisonAI's fallback probe pass against the gateway too.
    proxy = FaultyProxy(gateway.url).start()
    no_health = FaultyProxy(gateway.url, health=False).start()
    try:
        urls = [f"{p.url.removeprefix('http://')}/agent" for p in (proxy, no_health)]
        script = tmp_path / "client.py"
        script.write_text(CLIENT_SCRIPT)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONKIT_", "PYTHON"))}
        env["OPENAI_API_KEY"] = "unused"  # some praisonaiagents versions check it on import
        run = subprocess.run(
            [str(praisonai_python), str(script), *urls, f"127.0.0.1:{free_port()}/agent"],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
            env=env,
        )
    finally:
        proxy.stop()
        no_health.stop()
    assert run.returncode == 0, run.stderr[-4000:]
    line = next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))

    assert result["is_remote"] is True
    assert result["chat"] == "Hello from sessionkit!"
    assert result["send_message"] == "Second answer."
    assert result["default_ids_chat"] == "You are the default user."
    assert result["unreachable"].startswith("ConnectionError:")
    # PraisonAI's connection check (in both constructors, and called once more): GET <agent_url>/health,
    # which the gateway answers (the same as /health) ...
    assert [(s.method, s.path) for s in proxy.seen if s.method in ("GET", "HEAD")] == [
        ("GET", "/agent/health")
    ] * 3
    # ... and where that is missing, HEAD <agent_url>, which the gateway answers 405 (a POST-only
    # route), which PraisonAI accepts.
    assert [(s.method, s.path) for s in no_health.seen] == [("GET", "/agent/health"), ("HEAD", "/agent")]
    # The legacy body: the turns landed in PraisonAI's session, for its user.
    events = httpx.get(
        f"{gateway.url}/v1/sessions/praison_remote/events", params={"user_id": "praison_user"}
    ).json()["events"]
    assert [e["content"] for e in events] == [
        "Hello from PraisonAI",
        "Hello from sessionkit!",
        "Again, via send_message",
        "Second answer.",
    ]
    session_id, user_id = result["default_ids"]
    assert user_id == "default_user"
    assert (
        httpx.get(f"{gateway.url}/v1/sessions/{session_id}", params={"user_id": user_id}).status_code == 200
    )
    assert module_llm.pending == 0
