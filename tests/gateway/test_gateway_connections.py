"""Slow and idle connections to the gateway (issue 14, item 13), over real sockets: a client sending its
headers a byte at a time, or nothing at all, is disconnected at the header timeout; a kept-alive
connection left idle is closed after the keep-alive time; a prompt client is served as before."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.support import state_server
from tests.gateway.test_gateway_support import GatewayThread, gateway_settings
from tests.servers import ServerThread

REQUEST = b"GET /health HTTP/1.1\r\nHost: gateway\r\nUser-Agent: slow-client\r\n\r\n"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    server: ServerThread = state_server(Path(tmp_path_factory.mktemp("connections")))
    settings = gateway_settings(http_header_timeout_seconds=1.0, http_keep_alive_seconds=1.0)
    thread = GatewayThread(settings, server.address).start()
    yield "127.0.0.1", thread.server.port
    thread.stop()
    server.stop()


def closed_after(sock: socket.socket, trickle: bytes = b"", every: float = 0.3, limit: float = 6.0) -> float:
    """Seconds until the server closes ``sock`` while the client sends ``trickle`` a byte per ``every``."""
    start = time.monotonic()
    sock.settimeout(every)
    sent = 0
    while time.monotonic() - start < limit:
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - start
        if sent < len(trickle):
            try:
                sock.send(trickle[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - start
            sent += 1
    raise AssertionError(f"the connection was still open after {limit}s ({sent} bytes sent)")


def test_headers_sent_a_byte_at_a_time_are_cut_off_at_the_header_timeout(gateway: tuple[str, int]) -> None:
    with socket.create_connection(gateway) as sock:
        assert 0.8 < closed_after(sock, REQUEST) < 3.0


def test_a_connection_that_sends_nothing_is_closed(gateway: tuple[str, int]) -> None:
    with socket.create_connection(gateway) as sock:
        assert 0.8 < closed_after(sock) < 3.0


def test_an_idle_kept_alive_connection_is_closed_and_prompt_clients_are_served(
    gateway: tuple[str, int],
) -> None:
    with socket.create_connection(gateway) as sock:
        sock.sendall(REQUEST)
        sock.settimeout(10)
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 ")
        # The answer's body arrives, then nothing: the idle connection is closed after ~1 s.
        assert closed_after(sock) < 3.0
