"""The README's Python example works verbatim, as a new user runs it: a fresh directory, no server,
no address (the SDK starts the local server), and again from a second process (state persisted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks, "README.md has no python example"
    return str(blocks[0])


@pytest.mark.slow
@pytest.mark.serial
def test_readme_example_runs_verbatim(tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONKIT_")}
    env["SESSIONKIT_IDLE_SHUTDOWN"] = "5"
    outputs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.splitlines())
    assert outputs[0] == [
        "Handling ticket SUP-456 for John Doe (en)",
        "['My order #12345 has not arrived']",
    ]
    # A second run is a second process: the same session, its log grown by one event.
    assert outputs[1][0] == "Handling ticket SUP-456 for John Doe (en)"
    assert outputs[1][1] == "['My order #12345 has not arrived', 'My order #12345 has not arrived']"
    assert (tmp_path / ".sessionkit" / "sessionkit.db").exists()


@pytest.mark.slow
@pytest.mark.serial
def test_readme_memory_example_runs_verbatim(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    script = tmp_path / "memory_example.py"
    script.write_text(blocks[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONKIT_")}
    env["SESSIONKIT_IDLE_SHUTDOWN"] = "5"
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["Completed unit tests successfully"]


@pytest.mark.slow
@pytest.mark.serial
def test_readme_agent_example_runs_verbatim_with_the_offline_model(tmp_path: Path) -> None:
    """The seed's chatbot as a new user runs it with no LLM configured: the packaged SmolLM2 answers."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    script = tmp_path / "agent_example.py"
    script.write_text(blocks[2])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONKIT_", "OPENAI_"))}
    env["SESSIONKIT_IDLE_SHUTDOWN"] = "5"
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first == "Previous issue: order_12345"
    assert second.startswith("Support Bot answered with SmolLM2-135M-Instruct: ")
    # a real, non-empty answer
    assert len(second) > len("Support Bot answered with SmolLM2-135M-Instruct: ...")


@pytest.mark.slow
@pytest.mark.serial
def test_readme_remote_example_runs_verbatim_against_make_run(tmp_path: Path) -> None:
    """`sessionkit serve` (what `make run` runs) with its gateway on the README's 127.0.0.1:8080, then
    the README's remote-session example and its curl line, verbatim."""
    import socket

    import httpx

    from tests.conftest import free_port
    from tests.servers import child_env, wait_serving

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8080)) == 0:
            pytest.skip("127.0.0.1:8080 is in use (a `make run` of this checkout?)")
    text = (ROOT / "README.md").read_text()
    block = re.findall(r"```python\n(.*?)```", text, re.S)[3]
    curl = re.findall(r"```bash\n(curl .*?)```", text, re.S)[0]
    grpc_port = free_port()
    env = child_env(SESSIONKIT_PORT=str(grpc_port), SESSIONKIT_DATA_DIR=str(tmp_path / "server"))
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "sessionkit.cli", "serve"],
        env={k: v for k, v in env.items() if not k.startswith("OPENAI_")},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        try:
            wait_serving(f"127.0.0.1:{grpc_port}", timeout=120)
        except TimeoutError:
            raise AssertionError((tmp_path / "serve.log").read_text()[-3000:]) from None
        # /health is 200 once every service is ready, the embedding model loaded.
        ready_by = time.monotonic() + 300
        while time.monotonic() < ready_by:
            try:
                if httpx.get("http://127.0.0.1:8080/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            subprocess.run(["sleep", "0.2"], check=True)
        script = tmp_path / "remote_example.py"
        script.write_text(block)
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["Connected to remote agent", "True"]
        reply = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=300)
        assert reply.returncode == 0, reply.stderr
        body = __import__("json").loads(reply.stdout)
        assert body["session_id"] == "curl-1" and body["response"]
        assert body["metadata"]["model"] == "SmolLM2-135M-Instruct"
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()
