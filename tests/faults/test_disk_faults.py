"""A full disk under the embedded SQLite store: a write is refused with STORAGE_FULL (gRPC
RESOURCE_EXHAUSTED, HTTP 507, the SDK's ResourceExhausted), at once (not retried, never INTERNAL)
and stores nothing of itself, while reads keep answering; once space is freed, writes work again.
The disk is a real one: the 4 MiB tmpfs of tests/faults/conftest.py."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sessionkit import Session
from sessionkit.errors import ResourceExhausted, ServiceUnavailable
from tests.faults.support import Served
from tests.servers import ROOT, child_env

pytestmark = pytest.mark.slow

BIG = "x" * 300_000  # a value larger than what is left once the disk is filled


@contextlib.contextmanager
def filled(disk: Path) -> Iterator[None]:
    """The disk full to its last byte for the block's duration."""
    filler = disk / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
    try:
        yield
    finally:
        filler.unlink()


def test_a_full_disk_refuses_writes_clearly_and_keeps_reads(disk: Path, served: Served) -> None:
    if not disk.is_mount():
        pytest.skip("a small disk to fill needs root to mount it (CI runs as root)")
    with (
        Session("full", user_id="u", address=served.address, timeout=10) as direct,
        Session("full", user_id="u", agent_url=f"{served.url}/agent", timeout=10) as remote,
    ):
        direct.set_state("kept", {"a": 1})
        version = direct.state_version()
        with filled(disk):
            for session in (direct, remote):
                started = time.monotonic()
                with pytest.raises(ResourceExhausted) as refused:
                    session.set_state("big", BIG)
                assert refused.value.reason == "STORAGE_FULL", refused.value
                assert "storage is full" in str(refused.value)
                assert time.monotonic() - started < 5  # refused, not retried until the deadline
            with httpx.Client(base_url=served.url, timeout=10) as http:
                reply = http.put("/v1/sessions/full/state/big", params={"user_id": "u"}, json={"value": BIG})
                assert reply.status_code == 507, reply.text
                assert reply.json()["error"]["reason"] == "STORAGE_FULL"
                # Reads answer, over both transports, and nothing of the refused writes is stored.
                assert http.get("/v1/sessions/full/state", params={"user_id": "u"}).json()["state"] == {
                    "kept": {"a": 1}
                }
            assert direct.get_state("kept") == {"a": 1} and remote.get_state("kept") == {"a": 1}
            assert direct.get_state("big") is None and direct.state_version() == version
        # Space again: writes work, on the same server, without a restart.
        direct.set_state("big", BIG)
        assert remote.get_state("big") == BIG and direct.state_version() == version + 1


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "8m") -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("end", ["kill", "stop"])
def test_data_on_read_only_storage_is_served_read_only(tmp_path: Path, end: str) -> None:
    """A data directory that went read-only (a mount remounted read-only after the server died): serve
    starts on it, reads answer everything it holds (writes the killed server left in SQLite's WAL
    included), and every write is refused at once with STORAGE_READ_ONLY (UNAVAILABLE, HTTP 503, not
    retried), on both transports. The storage is really read-only: the tmpfs is remounted ro (a mount
    with a writer open cannot be, so the first server ends first: killed, its last writes left in the
    WAL, or stopped, the WAL checkpointed and gone)."""
    if os.geteuid() != 0:
        pytest.skip("remounting a tmpfs read-only needs root (CI runs as root)")
    with tmpfs(tmp_path / "mnt") as mount:
        first = Served(mount / "data", log_dir=tmp_path)
        with Session("ro", user_id="u", address=first.address, timeout=10) as session:
            session.save_state({"kept": {"a": 1}, "n": 1})
            session.add_event("user", "hello")
            version = session.state_version()
        if end == "kill":
            first.close()
        else:
            assert first.child.stop() == 0
        assert (mount / "data" / "sessionkit.db-wal").exists() == (end == "kill")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        if end == "kill":
            # Memory and knowledge keep the embedded Chroma there, which cannot open read-only: one line.
            done = subprocess.run(
                [sys.executable, "-m", "sessionkit.cli", "serve", "--port", "0"],
                env=child_env(SESSIONKIT_DATA_DIR=str(mount / "data"), SESSIONKIT_HTTP_PORT="0"),
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
            assert "served read-only with --service state" in done.stderr
        served = Served(mount / "data", http=True, log_dir=tmp_path)
        try:
            with (
                Session("ro", user_id="u", address=served.address, timeout=10) as direct,
                Session("ro", user_id="u", agent_url=f"{served.url}/agent", timeout=10) as remote,
            ):
                for session in (direct, remote):
                    assert session.restore_state() == {"kept": {"a": 1}, "n": 1}
                    assert session.state_version() == version
                    started = time.monotonic()
                    with pytest.raises(ServiceUnavailable) as refused:
                        session.set_state("n", 2)
                    assert refused.value.reason == "STORAGE_READ_ONLY", refused.value
                    assert "read-only" in str(refused.value)
                    assert time.monotonic() - started < 5  # refused, not retried until the deadline
                assert [e.content for e in direct.get_events()] == ["hello"]
                with pytest.raises(ServiceUnavailable, match="read-only"):
                    Session("new", user_id="u", address=served.address, timeout=10).set_state("a", 1)
            with httpx.Client(base_url=served.url, timeout=10) as http:
                reply = http.put("/v1/sessions/ro/state/n", params={"user_id": "u"}, json={"value": 3})
                assert reply.status_code == 503, reply.text
                assert reply.json()["error"]["reason"] == "STORAGE_READ_ONLY"
                state = http.get("/v1/sessions/ro/state", params={"user_id": "u"}).json()["state"]
                assert state == {"kept": {"a": 1}, "n": 1}
            assert "is read-only" in served.child.log() and "serving reads" in served.child.log()
        finally:
            served.close()


def test_a_read_only_data_directory_without_data_is_refused_at_start_in_one_line(tmp_path: Path) -> None:
    """A read-only directory with no database holds nothing to serve: serve says so and exits 1, with
    no traceback (it used to die in an OSError's traceback from its lock file)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root (CI runs as root)")
    read_only = tmp_path / "ro"
    read_only.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(read_only)], check=True)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "sessionkit.cli", "serve", "--service", "state", "--port", "0"],
            env=child_env(SESSIONKIT_DATA_DIR=str(read_only), SESSIONKIT_HTTP_PORT="0"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        subprocess.run(["umount", "-l", str(read_only)], check=False)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "─" not in done.stderr, done.stderr
    assert f"cannot write the data directory {read_only}" in done.stderr
    assert "Read-only file system" in done.stderr
