"""The fault suites' shared server: ``sessionkit serve --service state`` with its gateway, on SQLite in a
4 MiB tmpfs (so a test can fill its disk), started once for the package (starting one takes seconds)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.support import Served

HEARTBEAT = 0.5  # the gateway's SSE heartbeat interval in these suites


@pytest.fixture(scope="package")
def disk() -> Iterator[Path]:
    """A 4 MiB tmpfs (as root, as on CI), else a plain directory (the disk-full test skips then)."""
    mount_point = Path(tempfile.mkdtemp(prefix="sessionkit-disk-"))
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        if mount_point.is_mount():
            subprocess.run(["umount", "-l", str(mount_point)], check=False)
        shutil.rmtree(mount_point, ignore_errors=True)


@pytest.fixture(scope="package")
def served(disk: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    logs = tmp_path_factory.mktemp("faults-logs")  # not on the small disk: a test fills it
    server = Served(disk / "data", http=True, log_dir=logs, SESSIONKIT_SSE_HEARTBEAT_SECONDS=str(HEARTBEAT))
    yield server
    server.close()
