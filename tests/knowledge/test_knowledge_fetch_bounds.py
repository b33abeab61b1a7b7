"""URL fetch bounds (issue 14, item 5), against a real local HTTP server: the timeout is a total deadline
(a server trickling 1 byte/s is cut off at it, not only when one read stalls), and an out-of-range port
or a malformed URL, named directly or by a redirect, is INVALID_ARGUMENT naming the URL, never INTERNAL."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sessionkit.errors import DeadlineExceeded, InvalidArgument
from sessionkit_server.knowledge.fetch import FetchSettings, fetch

REDIRECTS = {
    "/to-big-port": "http://127.0.0.1:99999/page",
    "/to-malformed": "http://[::1/page",
    "/to-ftp": "ftp://127.0.0.1/page",
}


class _Trickle(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path in REDIRECTS:
            self.send_response(302)
            self.send_header("Location", REDIRECTS[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        # Announce 30 bytes and send one a second: every read arrives well within any per-read timeout.
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "30")
        self.end_headers()
        try:
            for _ in range(30):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(1)
        except OSError:
            pass  # the client gave up: what the test expects

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def web() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def ignore(read: int, total: int) -> None:
    pass


LOCAL = FetchSettings(timeout_seconds=2.5, allow_private=True)


async def test_a_trickling_server_is_cut_off_at_the_total_deadline(web: int) -> None:
    read: list[int] = []
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded) as info:
        await fetch(f"http://127.0.0.1:{web}/slow", LOCAL, lambda n, total: read.append(n))
    elapsed = time.monotonic() - start
    assert info.value.reason == "URL_FETCH_TIMEOUT"
    assert "timed out after 2.5s" in info.value.message
    assert 2.0 < elapsed < 4.0, elapsed
    assert read and read[-1] < 30  # it was reading, slowly, when cut off


@pytest.mark.parametrize("port", ["99999", "65536", "-1"])
async def test_an_out_of_range_port_is_invalid_argument(port: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        await fetch(f"http://127.0.0.1:{port}/page", LOCAL, ignore)
    assert info.value.violations[0].field == "url"
    assert "port" in info.value.message.lower()


@pytest.mark.parametrize(
    ("path", "says"),
    [("/to-big-port", "port"), ("/to-malformed", "IPv6"), ("/to-ftp", "only http:// and https://")],
)
async def test_a_redirect_to_a_bad_url_is_invalid_argument_naming_it(web: int, path: str, says: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        await fetch(f"http://127.0.0.1:{web}{path}", LOCAL, ignore)
    message = info.value.message
    assert f"redirect from 'http://127.0.0.1:{web}{path}'" in message
    assert REDIRECTS[path][:30] in message and says in message
    assert info.value.violations[0].field == "url"
