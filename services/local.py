"""Entry point of the embedded local server (started by sessionkit.embedded, one per storage_path).

Holds the data directory's lock for its whole life (sessionkit_server.common.storage_lock), so at most one
server opens a storage_path's files; a second one started in a race exits at once with status 0.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from sessionkit_server.common import event_loop, logs, storage_lock
from sessionkit_server.common.config import ServerSettings
from sessionkit_server.server import create_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sessionkit_server.local")
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--idle-shutdown", type=float, default=600.0)
    args = parser.parse_args(argv)

    try:
        lock = storage_lock.acquire(args.data_dir)
    except storage_lock.StorageBusy:
        return 0  # another server owns this storage_path; the client connects to it
    storage_lock.remove_stale_socket(args.socket)
    settings = ServerSettings(
        data_dir=args.data_dir,
        unix_socket=args.socket,
        port=-1,
        idle_shutdown_seconds=args.idle_shutdown,
        drain_seconds=2.0,
        # The embedded server answers only on a unix socket in the user's own data directory: no API
        # keys (an SESSIONKIT_API_KEYS meant for a gateway must not lock the SDK out) and no gateway.
        api_keys={},
        api_keys_file=None,
        http_port=0,
        # Nobody balances load over it, and many scripts never search: the model loads on first use.
        preload_models=False,
    )
    logs.configure(settings.log_level, settings.log_format)

    async def run() -> None:
        host, _ = await create_server(settings)
        await host.serve_until_signal()

    try:
        event_loop.run(run(), settings.event_loop)
    finally:
        with contextlib.suppress(FileNotFoundError):
            args.socket.unlink()
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
