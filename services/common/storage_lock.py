"""The lock that makes one process the server of a data directory (its SQLite file and vector index).

Both the embedded local server (sessionkit_server.local) and ``sessionkit serve`` on a SQLite data directory
hold ``<data_dir>/server.lock`` and listen on the directory's unix socket, so an SDK using that
directory as its storage_path finds whichever of them is running and never opens the files itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO


class StorageBusy(RuntimeError):
    """Another process serves this data directory."""


def acquire(data_dir: Path) -> IO[str]:
    """Lock ``data_dir`` for this process's lifetime (the kernel releases it when the process dies)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / "server.lock", "a+")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise StorageBusy(
            f"{data_dir} is already served by another sessionkit process (pid {owner})"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def remove_stale_socket(path: Path) -> None:
    """Remove a socket left by a server that was killed (only call while holding the lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
