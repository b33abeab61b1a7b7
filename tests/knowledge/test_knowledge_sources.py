"""The knowledge service through the SDK, as users write it, on SQLite and PostgreSQL with embedded Chroma
and on SQLite with a real Chroma server: every supported format from fixture files made here, URLs from a
local HTTP server, the SSRF guard, corrupt files and the upload limit."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessionkit import InvalidArgument
from sessionkit.errors import FailedPrecondition, PermissionDenied, ResourceExhausted
from tests.knowledge.support import _settings, make_files, session
from tests.servers import ServerThread


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """The default URL policy: private, loopback and link-local addresses refused."""
    thread = ServerThread(_settings(tmp_path_factory.mktemp("strict"), allow_private=False)).start()
    yield thread
    thread.stop()


class _Pages(http.server.BaseHTTPRequestHandler):
    pages: dict[str, tuple[int, str, bytes, dict[str, str]]] = {}

    def do_GET(self) -> None:
        status, content_type, body, headers = self.pages.get(self.path, (404, "text/plain", b"missing", {}))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def web() -> Iterator[str]:
    """A local web server: "http://127.0.0.1:PORT"; pages are registered in _Pages.pages."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    _Pages.pages.update(
        {
            "/article.html": (
                200,
                "text/html; charset=utf-8",
                b"<html><head><title>Tide pools</title><script>var hidden = 'scripttext';</script></head>"
                b"<body><h1>Tide pools</h1><p>Sea anemones close their tentacles at low tide.</p>"
                b"<h2>Crabs</h2><p>Hermit crabs swap shells as they grow.</p></body></html>",
                {},
            ),
            "/notes.txt": (200, "text/plain", b"The lighthouse keeper logs the fog horn hours.", {}),
            "/image.png": (200, "image/png", b"\x89PNG\r\n\x1a\nxxxx", {}),
            "/gone": (410, "text/plain", b"gone", {}),
            "/to-article": (302, "text/plain", b"", {"Location": "/article.html"}),
        }
    )
    yield base
    server.shutdown()
    server.server_close()


# -- tests ---------------------------------------------------------------------------------------------


def test_every_format_is_uploaded_chunked_and_found(knowledge_server: ServerThread, tmp_path: Path) -> None:
    s = session(knowledge_server)
    files = make_files(tmp_path)
    for name, (path, _, _) in files.items():
        result = s.add_knowledge(str(path))
        assert result["kind"] == "file" and result["outcome"] == "created", name
        assert result["source"]["name"] == name and result["source"]["chunk_count"] >= 1
    assert sorted(src["name"] for src in s.list_knowledge()) == sorted(files)
    for name, (_, query, expected) in files.items():
        hits = s.search_knowledge(query, limit=3)
        assert hits and hits[0]["source"]["name"] == name and expected in hits[0]["text"], (name, hits[:1])
    pdf_hit = s.search_knowledge("obsidian volcanic glass", limit=1)[0]
    assert pdf_hit["position"]["page"] == 2
    assert s.list_knowledge()[0]["content_type"]
    titles = {src["name"]: src["title"] for src in s.list_knowledge()}
    assert titles["guide.pdf"] == "Volcano field guide" and titles["page.html"] == "Bees"
    md = s.search_knowledge("buoyancy aid river", limit=1)[0]
    assert md["heading_path"] == ["Kayak trips", "Safety"]
    docx_hit = s.search_knowledge("codling moth larvae", limit=1)[0]
    assert docx_hit["heading_path"] == ["Orchard handbook", "Pests"]
    html = s.search_knowledge("waggle dance", limit=1)[0]["text"]
    assert "perform a waggle dance to share" in html and "color:red" not in html


def test_text_and_url_sources_and_what_the_sdk_took_them_for(
    knowledge_server: ServerThread, web: str
) -> None:
    s = session(knowledge_server)
    text = s.add_knowledge("Quick reference: the API key is required for all requests")
    assert text["kind"] == "text" and text["source"]["name"].startswith("text-")
    page = s.add_knowledge(f"{web}/article.html")
    assert page["kind"] == "url" and page["source"]["title"] == "Tide pools"
    assert page["source"]["uri"] == f"{web}/article.html"
    hits = s.search_knowledge("hermit crabs shells", limit=2)
    assert hits[0]["source"]["name"] == f"{web}/article.html" and hits[0]["heading_path"][-1] == "Crabs"
    assert s.search_knowledge("scripttext", limit=5) == [] or all(
        "scripttext" not in h["text"] for h in s.search_knowledge("scripttext", limit=5)
    )
    redirected = s.add_knowledge(f"{web}/to-article", name="via-redirect")
    assert redirected["source"]["uri"] == f"{web}/article.html"
    assert s.add_knowledge(f"{web}/notes.txt")["source"]["chunk_count"] == 1
    with pytest.raises(InvalidArgument) as bad_type:
        s.add_knowledge(f"{web}/image.png")
    assert bad_type.value.reason == "UNSUPPORTED_CONTENT_TYPE"
    with pytest.raises(FailedPrecondition) as gone:
        s.add_knowledge(f"{web}/gone")
    assert gone.value.metadata["http_status"] == "410"
    context = s.get_context("API key requests", max_items=2)
    assert "Knowledge:" in context and "API key is required" in context


@pytest.mark.parametrize(
    "url",
    [
        "LOOPBACK",
        "http://10.1.2.3/internal",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/x",
        "http://localhost/x",
    ],
)
def test_private_addresses_are_refused_by_default(strict_server: ServerThread, web: str, url: str) -> None:
    s = session(strict_server)
    with pytest.raises(PermissionDenied) as info:
        s.add_knowledge(f"{web}/notes.txt" if url == "LOOPBACK" else url)
    assert info.value.reason == "URL_NOT_ALLOWED"
    assert s.list_knowledge() == []


@pytest.fixture(scope="module")
def allowlist_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """Private addresses refused, except the host named "127.0.0.1" (an allowed internal host)."""
    settings = _settings(
        tmp_path_factory.mktemp("allowlist"), allow_private=False, knowledge_allowed_hosts=["127.0.0.1"]
    )
    thread = ServerThread(settings).start()
    yield thread
    thread.stop()


def test_every_redirect_hop_is_checked(allowlist_server: ServerThread, web: str) -> None:
    s = session(allowlist_server)
    port = web.rsplit(":", 1)[1]
    _Pages.pages["/to-localhost"] = (
        302,
        "text/plain",
        b"",
        {"Location": f"http://localhost:{port}/notes.txt"},
    )
    _Pages.pages["/to-metadata"] = (302, "text/plain", b"", {"Location": "http://169.254.169.254/latest"})
    assert s.add_knowledge(f"{web}/to-article")["source"]["title"] == "Tide pools"  # same allowed host
    for path in ("/to-localhost", "/to-metadata"):
        with pytest.raises(PermissionDenied) as info:
            s.add_knowledge(f"{web}{path}")
        assert info.value.reason == "URL_NOT_ALLOWED", path
    assert [src["title"] for src in s.list_knowledge()] == ["Tide pools"]


def test_corrupt_and_unknown_files_are_refused_and_leave_nothing(
    knowledge_server: ServerThread, tmp_path: Path
) -> None:
    s = session(knowledge_server)
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.7\nthis is not really a pdf")
    (tmp_path / "broken.docx").write_bytes(b"PK\x03\x04 not a zip at all")
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00\x01\x02")
    (tmp_path / "data.xyz").write_bytes(b"\x00\x01\x02")
    for name in ("broken.pdf", "broken.docx", "broken.json", "binary.txt", "data.xyz"):
        with pytest.raises(InvalidArgument) as info:
            s.add_knowledge(str(tmp_path / name))
        assert name in str(info.value) and info.value.reason == "UNSUPPORTED_CONTENT_TYPE", name
    assert s.list_knowledge() == []


def test_upload_size_limit(knowledge_server: ServerThread, tmp_path: Path) -> None:
    s = session(knowledge_server)
    big = tmp_path / "big.txt"
    big.write_text("word " * (600 << 10))  # 3 MiB, over the 2 MiB limit of this server
    with pytest.raises(ResourceExhausted) as info:
        s.add_knowledge(str(big))
    assert "big.txt" in str(info.value) and info.value.reason == "SOURCE_TOO_LARGE"
    assert s.list_knowledge() == []
