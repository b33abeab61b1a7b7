"""Entry point of the embedded local server (started by sessionkit.embedded, one per storage_path).

Holds an exclusive lock on ``<data-dir>/server.lock`` for its whole life, so at most one server
opens a storage_path's files; a second one started in a race exits at once with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import sys
from pathlib import Path

from services.common import logs
from services.common.config import ServerSettings
from services.server import create_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.local")
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--idle-shutdown", type=float, default=600.0)
    args = parser.parse_args(argv)

    args.data_dir.mkdir(parents=True, exist_ok=True)
    lock_file = open(args.data_dir / "server.lock", "a+")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another local server owns this storage_path
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"{os.getpid()}\n")
    lock_file.flush()

    with contextlib.suppress(FileNotFoundError):
        args.socket.unlink()  # left by a server that was killed
    settings = ServerSettings(
        data_dir=args.data_dir,
        unix_socket=args.socket,
        port=-1,
        idle_shutdown_seconds=args.idle_shutdown,
        drain_seconds=2.0,
    )
    logs.configure(settings.log_level, settings.log_format)

    async def run() -> None:
        host, _ = await create_server(settings)
        await host.serve_until_signal()

    try:
        asyncio.run(run())
    finally:
        with contextlib.suppress(FileNotFoundError):
            args.socket.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
