"""The README's Python example works verbatim, as a new user runs it: a fresh directory, no server,
no address (the SDK starts the local server), and again from a second process (state persisted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks, "README.md has no python example"
    return str(blocks[0])


@pytest.mark.slow
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
