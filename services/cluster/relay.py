"""A TCP relay: ``python -m sessionkit_server.cluster.relay LISTEN_HOST:PORT TARGET_HOST:PORT``. With
``--netns``, a service in its namespace cannot reach this machine's loopback (where PostgreSQL or an LLM
server may listen only); the relay listens on the bridge's address and forwards to it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()


async def relay(listen: str, target: str) -> None:
    target_host, _, target_port = target.rpartition(":")

    async def connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(target_host, int(target_port))
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    host, _, port = listen.rpartition(":")
    server = await asyncio.start_server(connect, host, int(port), reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: python -m sessionkit_server.cluster.relay LISTEN_HOST:PORT TARGET_HOST:PORT")
    asyncio.run(relay(sys.argv[1], sys.argv[2]))


if __name__ == "__main__":
    main()
