"""The ``sessionkit`` command line run as a user runs it: a real child process against a real server.

Values go in and come out as JSON, sessions can be listed, shown and removed, every error is one
``error: ...`` line on stderr with exit status 1 (never a traceback), and ``sessionkit serve`` serves
until SIGTERM, then drains and exits 0.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sessionkit import Session
from sessionkit.embedded import socket_path
from tests.conftest import free_port
from tests.servers import ChildProcess, ServerThread, child_env, wait_serving

pytestmark = pytest.mark.slow

CLI_TIMEOUT = 60.0


def cli(cwd: Path, *args: str, timeout: float = CLI_TIMEOUT, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m sessionkit.cli args...`` in ``cwd`` (so a stray default .sessionkit lands there)."""
    return subprocess.run(
        [sys.executable, "-m", "sessionkit.cli", *args],
        cwd=cwd,
        env=child_env(COLUMNS="200", **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stderr}"
    return result.stdout


def assert_one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """Exit status 1, and stderr is exactly one line ``error: ...`` (no traceback); that line."""
    assert result.returncode == 1, (
        f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def listed_ids(output: str) -> list[str]:
    """The session_id column of the ``sessions ls`` table (body rows start with '│')."""
    return [line.split("│")[1].strip() for line in output.splitlines() if line.startswith("│")]


def shown_json(output: str) -> object:
    """The JSON document (the state) in ``sessions show`` output: from a line '{' to its line '}'."""
    lines = output.splitlines()
    start = lines.index("{")
    end = lines.index("}", start)
    return json.loads("\n".join(lines[start : end + 1]))


# -- state set / get ---------------------------------------------------------------------------------


def test_state_set_then_get_prints_the_value(sqlite_server: ServerThread, tmp_path: Path) -> None:
    address = sqlite_server.address
    ok(cli(tmp_path, "state", "set", "s1", "theme", '"dark"', "--address", address))
    out = ok(cli(tmp_path, "state", "get", "s1", "theme", "--address", address))
    assert out.strip() == '"dark"'
    assert json.loads(out) == "dark"
    # Nothing went to an embedded store in the working directory.
    assert not (tmp_path / ".sessionkit").exists()


def test_state_set_parses_json_values(sqlite_server: ServerThread, tmp_path: Path) -> None:
    address = sqlite_server.address
    for key, text in [("n", "5"), ("quoted", '"5"'), ("mood", "happy"), ("obj", '{"a": [1, 2.5, null]}')]:
        ok(cli(tmp_path, "state", "set", "s1", key, text, "--address", address))
    assert ok(cli(tmp_path, "state", "get", "s1", "n", "--address", address)).strip() == "5"
    # What an SDK user then reads: the number 5, the string "5", a bare word as a string, an object.
    state = Session("s1", address=address, timeout=10).restore_state()
    assert state == {"n": 5, "quoted": "5", "mood": "happy", "obj": {"a": [1, 2.5, None]}}
    assert type(state["n"]) is int
    whole = json.loads(ok(cli(tmp_path, "state", "get", "s1", "--address", address)))
    assert whole == state


# -- sessions ls / show / rm -------------------------------------------------------------------------


def test_sessions_ls_show_rm(sqlite_server: ServerThread, tmp_path: Path) -> None:
    address = sqlite_server.address
    ok(cli(tmp_path, "state", "set", "s1", "theme", '"dark"', "--address", address))
    ok(cli(tmp_path, "state", "set", "s1", "n", "5", "--address", address))
    Session("other-user-session", user_id="bob", address=address, timeout=10).set_state("x", 1)

    listing = ok(cli(tmp_path, "sessions", "ls", "--address", address))
    assert listed_ids(listing) == ["s1"], listing  # not bob's session
    assert "1 session(s) of user 'default'" in listing
    assert listed_ids(ok(cli(tmp_path, "sessions", "ls", "--user", "bob", "--address", address))) == [
        "other-user-session"
    ]

    shown = ok(cli(tmp_path, "sessions", "show", "s1", "--address", address))
    assert shown.splitlines()[0].startswith("s1 (user default, app default)")
    assert shown_json(shown) == {"theme": "dark", "n": 5}

    assert "deleted" in ok(cli(tmp_path, "sessions", "rm", "s1", "--address", address))
    line = assert_one_error_line(cli(tmp_path, "state", "get", "s1", "--address", address))
    assert "s1" in line
    listing = ok(cli(tmp_path, "sessions", "ls", "--address", address))
    assert listed_ids(listing) == []
    assert "0 session(s)" in listing


# -- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("state", "get", "nosuch"),
        ("state", "get", "nosuch", "theme"),
        ("sessions", "show", "nosuch"),
        ("sessions", "rm", "nosuch"),
    ],
    ids=lambda args: " ".join(args),
)
def test_unknown_session_is_one_error_line(
    sqlite_server: ServerThread, tmp_path: Path, args: tuple[str]
) -> None:
    line = assert_one_error_line(cli(tmp_path, *args, "--address", sqlite_server.address))
    assert "nosuch" in line


def test_unset_key_is_one_error_line(sqlite_server: ServerThread, tmp_path: Path) -> None:
    address = sqlite_server.address
    ok(cli(tmp_path, "state", "set", "s1", "theme", '"dark"', "--address", address))
    line = assert_one_error_line(cli(tmp_path, "state", "get", "s1", "missing", "--address", address))
    assert "missing" in line


@pytest.mark.parametrize(
    "args",
    [
        ("state", "get", "../../etc"),
        ("state", "set", "../../etc", "k", "1"),
        ("sessions", "show", "../../etc"),
        ("sessions", "rm", "../../etc"),
        ("state", "get", "s1", "--user", "../../etc"),
    ],
    ids=lambda args: " ".join(args),
)
def test_path_like_id_is_rejected_with_one_error_line(
    sqlite_server: ServerThread, tmp_path: Path, args: tuple[str]
) -> None:
    line = assert_one_error_line(cli(tmp_path, *args, "--address", sqlite_server.address))
    assert "../../etc" in line and "not a valid id" in line


@pytest.mark.parametrize("how", ["--address", "SESSIONKIT_ADDRESS"])
def test_server_not_running_is_one_error_line(tmp_path: Path, how: str) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    if how == "--address":
        result = cli(tmp_path, "state", "get", "s1", "--address", address)
    else:
        result = cli(tmp_path, "state", "get", "s1", SESSIONKIT_ADDRESS=address)
    took = time.monotonic() - start
    line = assert_one_error_line(result)
    assert "unavailable" in line and address in line, line
    assert took < 20, f"giving up on a closed port took {took:.1f}s"
    assert not (tmp_path / ".sessionkit").exists()  # it did not fall back to an embedded server


# -- serve -------------------------------------------------------------------------------------------


WATCH = """
import sys
from sessionkit import Session, errors
try:
    for change in Session("served", address=sys.argv[1], timeout=10).watch_state():
        print(change.operation, flush=True)
except errors.ServiceUnavailable:
    print("UNAVAILABLE", flush=True)
"""


@pytest.mark.serial
def test_serve_serves_and_exits_0_on_sigterm_within_the_drain_time(tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "data"
    drain = 3.0
    proc = ChildProcess(
        [sys.executable, "-m", "sessionkit.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)],
        tmp_path / "serve.log",
        cwd=tmp_path,
        env=child_env(SESSIONKIT_DRAIN_SECONDS=str(drain)),
    )
    watcher: subprocess.Popen[str] | None = None
    try:
        wait_serving(f"127.0.0.1:{port}", timeout=30)
        Session("served", address=f"127.0.0.1:{port}", timeout=10).set_state("k", "v")
        assert (data_dir / "server.lock").read_text().strip() == str(proc.pid)
        # A client holding a watch stream open: the drain must not wait for it beyond the drain time.
        watcher = subprocess.Popen(
            [sys.executable, "-c", WATCH, f"127.0.0.1:{port}"],
            cwd=tmp_path,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert watcher.stdout is not None
        assert select.select([watcher.stdout], [], [], 30)[0], "the watcher got no snapshot within 30s"
        assert watcher.stdout.readline().strip() == "SNAPSHOT"
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=drain + 10)
        took = time.monotonic() - start
        # The watcher is told, with the typed error, rather than left hanging.
        rest, _ = watcher.communicate(timeout=15)
        assert watcher.returncode == 0 and rest.split() == ["UNAVAILABLE"], (watcher.returncode, rest)
    finally:
        proc.kill()
        if watcher is not None:
            if watcher.poll() is None:
                watcher.kill()
                watcher.wait(timeout=10)
            if watcher.stdout is not None:
                watcher.stdout.close()
        log = proc.log()
    assert code == 0, log
    assert took < drain + 2, f"exit took {took:.1f}s after SIGTERM (drain {drain}s)"
    assert "Traceback" not in log
    assert not socket_path(data_dir.resolve()).exists(), "serve left its unix socket behind"


@pytest.mark.parametrize("port", ["70000", "-5"])
def test_serve_on_an_invalid_port_is_one_error_line(tmp_path: Path, port: str) -> None:
    try:
        result = cli(tmp_path, "serve", "--port", port, "--data-dir", str(tmp_path / "data"), timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"serve --port {port} is still serving after 15s instead of refusing the port")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "port" in lines[0] and port in lines[0]


def test_serve_on_a_port_in_use_fails_with_an_error_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = cli(tmp_path, "serve", "--port", port, "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    # gRPC's C core may log its own line about the bind first; ours is the one error: line.
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and port in errors[0], result.stderr
