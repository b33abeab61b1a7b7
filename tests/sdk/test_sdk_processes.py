"""What users rely on across processes: state outlives the process that wrote it, many processes share
one storage_path through one embedded server without losing or mixing writes, acknowledged writes
survive kill -9 (SQLite and PostgreSQL), and the embedded server comes back by itself after being
killed or idle-stopped.

Every SDK user here is a real child process (``python -c``) in embedded mode unless the test is about
a connected server; the embedded servers they start are found through ``<storage>/server.lock`` and
/proc, and stopped at the end of each test.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sessionkit import Session
from sessionkit.embedded import socket_path
from sessionkit.errors import DeadlineExceeded, ServiceUnavailable
from tests.conftest import free_port
from tests.servers import ServerProcess, child_env

pytestmark = pytest.mark.slow

CHILD_TIMEOUT = 60.0

# Every child script gets the storage path as argv[1] (``python -c code arg...``).
PRELUDE = """
import json, os, sys, time
from pathlib import Path
from sessionkit import Session
STORE = sys.argv[1]

def wait_for_go(ready, go):
    Path(ready).touch()
    deadline = time.monotonic() + 30
    while not Path(go).exists():
        if time.monotonic() > deadline:
            sys.exit("no go signal within 30s")
        time.sleep(0.001)
"""


# -- helpers ------------------------------------------------------------------------------------------


def run_child(code: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run ``python -c PRELUDE+code args...`` to completion; its stdout (it must exit 0)."""
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + code, *args],
        cwd=cwd,
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    assert proc.returncode == 0, f"child exited {proc.returncode}:\n{proc.stderr}"
    return proc.stdout


def start_child(code: str, *args: str, cwd: Path, **popen: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", PRELUDE + code, *args],
        cwd=cwd,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def finish(children: list[subprocess.Popen[str]]) -> list[str]:
    """Wait for every child (bounded); their stdouts. Each must exit 0."""
    outputs = []
    for child in children:
        try:
            out, errors = child.communicate(timeout=CHILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            out, errors = child.communicate(timeout=10)
            pytest.fail(f"child {child.pid} still running after {CHILD_TIMEOUT}s:\n{errors}")
        assert child.returncode == 0, f"child {child.pid} exited {child.returncode}:\n{errors}"
        outputs.append(out)
    return outputs


def release_together(children: list[subprocess.Popen[str]], barrier: Path) -> None:
    """Wait until every child is ready at its barrier, then let them all go at once."""
    ready = [barrier / f"ready-{i}" for i in range(len(children))]
    wait_until(lambda: all(path.exists() for path in ready), 30, "children ready at the barrier")
    (barrier / "go").touch()


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], timeout)
    if not readable:
        proc.kill()
        proc.wait(timeout=10)
        pytest.fail(f"no output from child {proc.pid} within {timeout}s")
    return proc.stdout.readline()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate``; the seconds it took to become true."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)
    return time.monotonic() - start


def pid_alive(pid: int) -> bool:
    """Running (a zombie, already dead but not reaped by its new parent, does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def local_server_pids(storage: Path) -> list[int]:
    """Live ``python -m sessionkit_server.local --data-dir <storage>`` processes."""
    root = str(storage.resolve())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
        if "sessionkit_server.local" not in argv or "--data-dir" not in argv:
            continue
        position = argv.index("--data-dir") + 1
        if position < len(argv) and argv[position] == root and pid_alive(int(entry.name)):
            pids.append(int(entry.name))
    return sorted(pids)


def lock_pid(storage: Path) -> int:
    return int((storage / "server.lock").read_text().strip())


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Path]:
    """An embedded storage_path; the local servers started on it are stopped afterwards."""
    path = tmp_path / "store"
    yield path
    pids = local_server_pids(path)
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


# -- a. one process writes, another restores ----------------------------------------------------------

SAVE = """
s = Session("chat-1", user_id="alice", storage_path=STORE)
s.save_state(json.loads(sys.argv[2]))
"""
RESTORE = """
print(json.dumps(Session(sys.argv[2], user_id=sys.argv[3], storage_path=STORE).restore_state()))
"""
STATE = {
    "theme": "dark",
    "turns": 3,
    "score": 0.25,
    "big": 2**53,
    "flags": [True, False, None],
    "profile": {"name": "Zoë ✓ 日本", "tags": ["a", "b"], "empty": {}, "none": []},
    "user:language": "fr",
}


def test_state_written_by_one_process_is_restored_by_another(storage: Path, tmp_path: Path) -> None:
    run_child(SAVE, str(storage), json.dumps(STATE), cwd=tmp_path)
    restored = json.loads(run_child(RESTORE, str(storage), "chat-1", "alice", cwd=tmp_path))
    # Canonical JSON: the same keys and values, and the same types (3 stays 3, not 3.0).
    assert json.dumps(restored, sort_keys=True) == json.dumps(STATE, sort_keys=True)
    # The data is in storage_path, not in the current directory's default .sessionkit.
    assert (storage / "server.lock").exists()
    assert not (tmp_path / ".sessionkit").exists()


# -- b. 30 sessions from 3 concurrent processes, one local server --------------------------------------

WRITE_TEN = """
proc_no = int(sys.argv[2])
wait_for_go(sys.argv[3], sys.argv[4])
for j in range(10):
    s = Session(f"p{proc_no}-s{j}", user_id=f"u{j % 3}", storage_path=STORE)
    s.save_state({"owner": s.session_id, "n": 100 * proc_no + j, "items": [proc_no, j]})
    s.set_state("user:name", f"name of u{j % 3}")
    s.increment_state("user:sessions")
    s.append_state("log", f"{s.session_id}/a", f"{s.session_id}/b")
"""
RESTORE_ALL = """
out = {}
for p in range(3):
    for j in range(10):
        out[f"p{p}-s{j}"] = Session(f"p{p}-s{j}", user_id=f"u{j % 3}", storage_path=STORE).restore_state()
print(json.dumps(out))
"""


def expected_thirty() -> dict[str, dict[str, Any]]:
    # user u0 has sessions j in {0, 3, 6, 9} of each of the 3 processes: 12; u1 and u2 have 9 each.
    sessions_of_user = {0: 12, 1: 9, 2: 9}
    expected = {}
    for p in range(3):
        for j in range(10):
            sid = f"p{p}-s{j}"
            expected[sid] = {
                "owner": sid,
                "n": 100 * p + j,
                "items": [p, j],
                "log": [f"{sid}/a", f"{sid}/b"],
                "user:name": f"name of u{j % 3}",
                "user:sessions": sessions_of_user[j % 3],
            }
    return expected


def test_thirty_sessions_from_three_concurrent_processes_each_restore_their_own_state(
    storage: Path, tmp_path: Path
) -> None:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    # No local server yet: the three children race to start it on their first call.
    assert not (storage / "server.lock").exists()
    children = [
        start_child(
            WRITE_TEN, str(storage), str(p), str(barrier / f"ready-{p}"), str(barrier / "go"), cwd=tmp_path
        )
        for p in range(3)
    ]
    release_together(children, barrier)
    finish(children)

    restored = json.loads(run_child(RESTORE_ALL, str(storage), cwd=tmp_path))
    expected = expected_thirty()
    wrong = {sid: restored.get(sid) for sid in expected if restored.get(sid) != expected[sid]}
    assert not wrong, f"{len(wrong)} of 30 sessions restored another state than their own: {wrong}"

    # The start race left exactly one local server, the one holding the lock.
    pid = lock_pid(storage)
    assert pid_alive(pid), f"the lock names pid {pid}, which is not running"
    assert local_server_pids(storage) == [pid]


# -- c. concurrent increments from two processes ------------------------------------------------------

INCREMENT = """
wait_for_go(sys.argv[2], sys.argv[3])
s = Session("counter", storage_path=STORE)
print(json.dumps([s.increment_state("n") for _ in range(100)]))
"""


def test_two_processes_incrementing_one_key_lose_no_write(storage: Path, tmp_path: Path) -> None:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    children = [
        start_child(INCREMENT, str(storage), str(barrier / f"ready-{i}"), str(barrier / "go"), cwd=tmp_path)
        for i in range(2)
    ]
    release_together(children, barrier)
    returned = [value for out in finish(children) for value in json.loads(out)]
    # Each increment saw a distinct counter value: none was lost or applied twice.
    assert sorted(returned) == list(range(1, 201))
    restored = json.loads(run_child(RESTORE, str(storage), "counter", "default", cwd=tmp_path))
    assert restored == {"n": 200}


# -- d. kill -9 under a stream of writes (SQLite and PostgreSQL) ---------------------------------------


def test_kill9_during_writes_keeps_every_acknowledged_write(database_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = ServerProcess(free_port(), data_dir, database_url)
    acked: list[int] = []
    failures: list[Exception] = []
    stop = threading.Event()

    def write_until_failure() -> None:
        session = Session("kill9", user_id="writer", address=server.address, timeout=2)
        i = 0
        try:
            while not stop.is_set():
                session.set_state(f"k{i}", i)
                acked.append(i)  # only once the server has answered
                i += 1
        except Exception as error:  # the type is asserted below
            failures.append(error)

    writer = threading.Thread(target=write_until_failure, daemon=True)
    writer.start()
    try:
        wait_until(lambda: len(acked) >= 150 or not writer.is_alive(), 60, "150 acknowledged writes")
        assert writer.is_alive(), f"the writer stopped before the kill: {failures}"
        server.kill9()
        writer.join(timeout=20)
        assert not writer.is_alive(), "a write still hangs 20s after the kill (Session timeout=2)"
    finally:
        stop.set()
        if server.proc.poll() is None:
            server.kill9()
        server.stderr_text()
        writer.join(timeout=20)
    assert len(failures) == 1 and isinstance(failures[0], (ServiceUnavailable, DeadlineExceeded)), failures
    assert len(acked) >= 150

    restarted = ServerProcess(free_port(), data_dir, database_url)
    try:
        state = Session("kill9", user_id="writer", address=restarted.address, timeout=10).restore_state()
    finally:
        code = restarted.terminate()
        log = restarted.stderr_text()
    assert code == 0, log
    lost = [i for i in acked if state.get(f"k{i}") != i]
    assert not lost, f"{len(lost)} acknowledged writes lost after kill -9: {lost[:20]}"
    # Writes are sequential: at most the one in flight at the kill is there without an acknowledgement.
    in_flight = len(acked)
    assert set(state) - {f"k{i}" for i in acked} <= {f"k{in_flight}"}
    assert state.get(f"k{in_flight}", in_flight) == in_flight


def test_kill9_during_grouped_writes_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    # Eight concurrent writers on SQLite: their writes commit in shared transactions (group commit),
    # and each is acknowledged only after its group's COMMIT, so none acknowledged is lost.
    data_dir = tmp_path / "data"
    server = ServerProcess(free_port(), data_dir, "")
    acked: dict[int, list[int]] = {w: [] for w in range(8)}
    stop = threading.Event()

    def write(w: int) -> None:
        session = Session(f"grouped-{w}", user_id="writer", address=server.address, timeout=2)
        i = 0
        try:
            while not stop.is_set():
                session.set_state(f"k{i}", i)
                acked[w].append(i)
                i += 1
        except (ServiceUnavailable, DeadlineExceeded):
            return

    writers = [threading.Thread(target=write, args=(w,), daemon=True) for w in range(8)]
    for writer in writers:
        writer.start()
    try:
        wait_until(lambda: sum(map(len, acked.values())) >= 400, 60, "400 acknowledged writes")
        server.kill9()
        for writer in writers:
            writer.join(timeout=20)
        assert not any(writer.is_alive() for writer in writers)
    finally:
        stop.set()
        if server.proc.poll() is None:
            server.kill9()
        server.stderr_text()
    restarted = ServerProcess(free_port(), data_dir, "")
    try:
        states = {
            w: Session(
                f"grouped-{w}", user_id="writer", address=restarted.address, timeout=10
            ).restore_state()
            for w in acked
        }
    finally:
        code = restarted.terminate()
        log = restarted.stderr_text()
    assert code == 0, log
    lost = [(w, i) for w, done in acked.items() for i in done if states[w].get(f"k{i}") != i]
    assert not lost, f"{len(lost)} acknowledged writes lost after kill -9: {lost[:20]}"


# -- e. the embedded server killed -9 comes back on the next call --------------------------------------

SURVIVE_KILL = """
s = Session("survivor", user_id="bob", storage_path=STORE)
s.save_state({"a": 1, "user:b": 2})
print("saved", flush=True)
sys.stdin.readline()  # meanwhile the test kills the local server with SIGKILL
s.set_state("c", 3)
print(json.dumps(s.restore_state()), flush=True)
"""


def test_embedded_server_killed_by_sigkill_is_restarted_by_the_next_call(
    storage: Path, tmp_path: Path
) -> None:
    child = start_child(SURVIVE_KILL, str(storage), cwd=tmp_path, stdin=subprocess.PIPE)
    try:
        assert read_line(child, CHILD_TIMEOUT).strip() == "saved"
        old = lock_pid(storage)
        assert local_server_pids(storage) == [old]
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: not pid_alive(old), 10, f"local server {old} dead after SIGKILL")
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        (out,) = finish([child])
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    # The same Session object, in the same process, carried on: restarted server, data intact.
    assert json.loads(out) == {"a": 1, "user:b": 2, "c": 3}
    new = lock_pid(storage)
    assert new != old
    assert local_server_pids(storage) == [new]
    # And a new process sees it all too.
    assert json.loads(run_child(RESTORE, str(storage), "survivor", "bob", cwd=tmp_path)) == {
        "a": 1,
        "user:b": 2,
        "c": 3,
    }


# -- f. idle shutdown and restart --------------------------------------------------------------------

WRITE_ONCE = """
Session("idle", storage_path=STORE).set_state("k", "v")
"""


def test_idle_local_server_exits_by_itself_and_the_next_call_starts_it_again(
    storage: Path, tmp_path: Path
) -> None:
    run_child(WRITE_ONCE, str(storage), cwd=tmp_path, env=child_env(SESSIONKIT_IDLE_SHUTDOWN="1"))
    pid = lock_pid(storage)
    # idle 1s, checked every second, then a drain of at most 2s with nothing in flight
    wait_until(lambda: not pid_alive(pid), 8, f"idle local server {pid} exited")
    assert local_server_pids(storage) == []
    assert not socket_path(storage.resolve()).exists(), "the idle server left its socket behind"

    restored = json.loads(run_child(RESTORE, str(storage), "idle", "default", cwd=tmp_path))
    assert restored == {"k": "v"}
    new = lock_pid(storage)
    assert new != pid
    assert local_server_pids(storage) == [new]
