"""URL fetching against real local HTTP(S) servers: each hop's host is resolved once and the
connection goes to the checked address (DNS rebinding), with the Host header and the TLS server name
of the URL's host. The DNS is a resolver function given to FetchSettings that answers differently on
each lookup, as a rebinding DNS server does."""

from __future__ import annotations

import http.server
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessionkit.errors import DeadlineExceeded, FailedPrecondition, PermissionDenied
from sessionkit_server.knowledge.fetch import FetchSettings, fetch


class _Recorder(http.server.BaseHTTPRequestHandler):
    hosts: list[str] = []

    def do_GET(self) -> None:
        self.hosts.append(self.headers.get("Host", ""))
        if self.path == "/hop":
            self.send_response(302)
            self.send_header("Location", "/page")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"Lighthouse keepers log the fog horn hours."
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def web() -> Iterator[int]:
    """A local HTTP server on 127.0.0.1; its port. Requests' Host headers go to _Recorder.hosts."""
    _Recorder.hosts = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


class RebindingDns:
    """Answers ``answers[n]`` to the n-th lookup (the last one thereafter) and counts lookups."""

    def __init__(self, *answers: str) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return [self.answers[min(len(self.lookups), len(self.answers)) - 1]]


def ignore(read: int, total: int) -> None:
    pass


async def test_a_name_resolving_to_loopback_is_refused_and_never_connected(web: int) -> None:
    dns = RebindingDns("127.0.0.1", "127.0.0.1")
    with pytest.raises(PermissionDenied) as info:
        await fetch(f"http://evil.example:{web}/page", FetchSettings(resolver=dns), ignore)
    assert info.value.reason == "URL_NOT_ALLOWED" and "127.0.0.1" in str(info.value)
    assert dns.lookups == ["evil.example"] and _Recorder.hosts == []


async def test_a_rebinding_answer_after_the_check_is_never_used(web: int) -> None:
    # The check sees a public address; a second lookup would say loopback (the attack). The fetch
    # connects to the checked public address (unreachable here: it times out) and never to loopback.
    dns = RebindingDns("1.2.3.4", "127.0.0.1")
    with pytest.raises((DeadlineExceeded, FailedPrecondition)):
        await fetch(
            f"http://rebind.example:{web}/page", FetchSettings(timeout_seconds=1.0, resolver=dns), ignore
        )
    assert dns.lookups == ["rebind.example"]
    assert _Recorder.hosts == []  # the loopback server was never reached


async def test_the_connection_goes_to_the_checked_address_with_the_original_host_header(web: int) -> None:
    # An allowed internal host: its first answer is used for the request; a later, different answer
    # (an unreachable address) would make the fetch fail if it were looked up again. Each redirect
    # hop is resolved (once) and checked again.
    dns = RebindingDns("127.0.0.1", "127.0.0.1", "10.255.255.1")
    settings = FetchSettings(
        timeout_seconds=5.0, allowed_hosts=frozenset({"docs.internal.test"}), resolver=dns
    )
    fetched = await fetch(f"http://docs.internal.test:{web}/hop", settings, ignore)
    assert fetched.data == b"Lighthouse keepers log the fog horn hours."
    assert fetched.url == f"http://docs.internal.test:{web}/page"  # the URL as named, not the address
    assert dns.lookups == ["docs.internal.test", "docs.internal.test"]  # one lookup per hop
    assert _Recorder.hosts == [f"docs.internal.test:{web}"] * 2


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, list[str | None]]]:
    """A local HTTPS server with a self-signed certificate; (port, server names the clients sent)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the openssl command is needed to make the test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=sni.test",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def record(sock: Any, name: str | None, ctx: Any) -> None:
        names.append(name)

    context.sni_callback = record
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1]), names
    server.shutdown()
    server.server_close()


async def test_https_sends_the_host_name_as_tls_server_name(tls_server: tuple[int, list[str | None]]) -> None:
    # Connected by address, the TLS handshake still names the host (SNI), and the certificate is
    # checked against that name: this self-signed one is refused, as any untrusted certificate.
    port, names = tls_server
    dns = RebindingDns("127.0.0.1")
    settings = FetchSettings(timeout_seconds=5.0, allow_private=True, resolver=dns)
    with pytest.raises(FailedPrecondition) as info:
        await fetch(f"https://sni.test:{port}/page", settings, ignore)
    assert info.value.reason == "URL_FETCH_FAILED" and "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    assert names == ["sni.test"]
