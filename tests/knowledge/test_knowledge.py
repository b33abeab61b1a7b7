"""The knowledge service through the SDK, as users write it: every supported format from fixture files
made here, URLs from a local HTTP server, the SSRF guard, corrupt files, re-adding (idempotent and
atomic replacement), scopes and clearing, chunkers and progress. Runs on SQLite and PostgreSQL with
embedded Chroma, and on SQLite with a real Chroma server."""

from __future__ import annotations

import asyncio
import csv
import http.server
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessionkit import AsyncSession, InvalidArgument, Session
from sessionkit.errors import FailedPrecondition, PermissionDenied, ResourceExhausted
from sessionkit_server.common.config import ServerSettings
from sessionkit_server.knowledge import chunking
from sessionkit_server.retrieval.tokens import EMBEDDABLE_TOKENS, count_tokens, token_spans
from sessionkit_server.retrieval.vector_index import VectorIndex, partition_prefix
from tests.chroma_server import chroma_server  # noqa: F401 - fixture
from tests.conftest import _truncate
from tests.servers import ServerThread


def _settings(tmp: Path, url: str = "", vector_url: str = "", **extra: Any) -> ServerSettings:
    return ServerSettings(
        port=0,
        data_dir=tmp / "data",
        database_url=url,
        vector_url=vector_url,
        services=["state", "memory", "knowledge"],
        log_format="text",
        knowledge_allow_private_urls=extra.pop("allow_private", True),
        **extra,
    )


@pytest.fixture(scope="module", params=["sqlite", "postgres", "chroma-server"])
def knowledge_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    """One server per backend for the module (tests use fresh session ids); loopback URLs allowed so
    pages can come from the local HTTP server."""
    kind = request.param
    url = request.getfixturevalue("pg_database") if kind == "postgres" else ""
    vector_url = request.getfixturevalue("chroma_server") if kind == "chroma-server" else ""
    thread = ServerThread(
        _settings(
            tmp_path_factory.mktemp(f"knowledge-{kind}"), url, vector_url, knowledge_max_upload_bytes=2 << 20
        )
    ).start()
    yield thread
    thread.stop()
    if url:
        asyncio.run(_truncate(url))


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


async def vector_ids(index: VectorIndex, app_name: str, where: dict[str, Any] | None = None) -> set[str]:
    """The ids of an app's knowledge vectors (in every scope's partition) matching ``where``."""
    found: set[str] = set()
    for coll in await index.collections(partition_prefix(f"knowledge:{app_name}")):
        found |= await index.ids(coll, where)
    return found


def session(server: ServerThread, sid: str | None = None, user: str | None = None, **kw: Any) -> Session:
    return Session(
        session_id=sid or f"s-{uuid.uuid4().hex[:8]}",
        user_id=user or f"u-{uuid.uuid4().hex[:8]}",
        address=server.address,
        **kw,
    )


# -- fixture files -----------------------------------------------------------------------------------


def make_pdf(path: Path) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title("Volcano field guide")
    pdf.set_font("Helvetica", size=12)
    pdf.add_page()
    pdf.multi_cell(0, 8, "Chapter one covers basalt columns formed by cooling lava.")
    pdf.add_page()
    pdf.multi_cell(0, 8, "Obsidian is volcanic glass that fractures with razor sharp edges.")
    pdf.output(str(path))
    return path


def make_docx(path: Path) -> Path:
    import docx

    document = docx.Document()
    document.add_heading("Orchard handbook", level=1)
    document.add_paragraph("Apple trees are pruned in late winter while dormant.")
    document.add_heading("Pests", level=2)
    document.add_paragraph("Codling moth larvae tunnel into the fruit core.")
    document.save(str(path))
    return path


def make_files(tmp: Path) -> dict[str, tuple[Path, str, str]]:
    """name -> (path, a query, text the best hit must contain)."""
    (tmp / "guide.txt").write_text("Sourdough starter needs feeding with flour and water every day.\n")
    (tmp / "readme.md").write_text(
        "# Kayak trips\n\nIntro to paddling.\n\n## Safety\n\nAlways wear a buoyancy aid on the river.\n"
    )
    (tmp / "page.html").write_text(
        "<html><head><title>Bees</title><style>.x{color:red}</style></head><body>"
        "<h1>Bees</h1><p>Honey bees perform a <b>waggle</b> <i>dance</i> to share nectar locations.</p>"
        "</body></html>"
    )
    with (tmp / "trains.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["line", "terminus"])
        writer.writerow(["Glacier Express", "Zermatt"])
        writer.writerow(["Bernina Express", "Tirano"])
    (tmp / "config.json").write_text(json.dumps({"telescope": {"aperture_mm": 203, "mount": "equatorial"}}))
    return {
        "guide.txt": (tmp / "guide.txt", "feeding sourdough starter", "Sourdough starter"),
        "readme.md": (tmp / "readme.md", "buoyancy aid river safety", "buoyancy aid"),
        "page.html": (tmp / "page.html", "waggle dance nectar", "waggle dance"),
        "trains.csv": (tmp / "trains.csv", "Glacier Express terminus", "Zermatt"),
        "config.json": (tmp / "config.json", "telescope aperture", "aperture_mm"),
        "guide.pdf": (make_pdf(tmp / "guide.pdf"), "obsidian volcanic glass", "Obsidian"),
        "orchard.docx": (make_docx(tmp / "orchard.docx"), "codling moth larvae", "Codling moth"),
    }


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


def test_readding_is_idempotent_and_a_change_replaces_the_chunks(
    knowledge_server: ServerThread, tmp_path: Path
) -> None:
    s = session(knowledge_server)
    doc = tmp_path / "policy.md"
    doc.write_text("# Policy\n\nRefunds are accepted within 30 days of purchase.\n")
    first = s.add_knowledge(str(doc))
    again = s.add_knowledge(str(doc))
    assert again["outcome"] == "unchanged" and again["chunks_added"] == 0
    assert again["source"]["id"] == first["source"]["id"]
    doc.write_text("# Policy\n\nReturns are possible within 14 days; store credit only.\n")
    updated = s.add_knowledge(str(doc))
    assert updated["outcome"] == "updated" and updated["source"]["id"] == first["source"]["id"]
    assert updated["chunks_removed"] == first["source"]["chunk_count"]
    assert len(s.list_knowledge()) == 1
    texts = [h["text"] for h in s.search_knowledge("refunds returns days purchase", limit=10)]
    assert texts and all("30 days" not in t for t in texts) and any("14 days" in t for t in texts)
    assert knowledge_server.host is not None
    index = knowledge_server.host.knowledge.index
    vectors = knowledge_server.call(vector_ids(index, "default", {"source_id": first["source"]["id"]}))
    assert len(vectors) == updated["source"]["chunk_count"]  # the old chunks' vectors are gone
    forced = s.add_knowledge(str(doc), force=True)
    assert forced["outcome"] == "updated"
    assert s.delete_knowledge("policy.md") is True
    assert s.search_knowledge("returns store credit") == []
    assert knowledge_server.call(vector_ids(index, "default", {"source_id": first["source"]["id"]})) == set()
    assert s.delete_knowledge("policy.md") is False
    readded = s.add_knowledge(str(doc))
    assert readded["outcome"] == "created" and readded["source"]["id"] != first["source"]["id"]


async def test_searches_during_replacement_never_mix_versions(knowledge_server: ServerThread) -> None:
    s = AsyncSession(f"s-{uuid.uuid4().hex[:8]}", user_id="atomic", address=knowledge_server.address)
    chunker = {"chunker": {"type": "token", "chunk_size": 16, "chunk_overlap": 0}}
    s.knowledge_config = chunker

    def body(tag: str) -> str:
        return " ".join(f"zebra{tag} stripe{n} savanna" for n in range(40))

    await s.add_knowledge(body("old"), name="animals")
    seen: list[set[str]] = []
    stop = asyncio.Event()

    async def searcher() -> None:
        while not stop.is_set():
            hits = await s.search_knowledge("zebra stripe savanna", limit=20, source_names=["animals"])
            seen.append({"old" if "zebraold" in h["text"] else "new" for h in hits})

    task = asyncio.create_task(searcher())
    for n in range(3):
        await s.add_knowledge(body("new" if n % 2 == 0 else "old"), name="animals")
    stop.set()
    await task
    assert seen and all(len(versions) <= 1 for versions in seen), seen


def test_scopes_and_clear(knowledge_server: ServerThread) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    a = session(knowledge_server, "a", user)
    b = session(knowledge_server, "b", user)
    other = session(knowledge_server, "a", f"{user}-other")
    a.add_knowledge("Session A note: the vault code is 4417")
    a.add_knowledge("User-wide note: the user prefers metric units", scope="user")
    assert b.search_knowledge("vault code") == [] or all(
        "vault" not in h["text"] for h in b.search_knowledge("vault code")
    )
    assert [h["text"] for h in b.search_knowledge("metric units preference", limit=1)] == [
        "User-wide note: the user prefers metric units"
    ]
    assert other.search_knowledge("metric units vault code") == []
    a.add_knowledge("Collection doc: office opens at 9", scope="collection", collection="handbook")
    assert b.search_knowledge("office opens") == [] or all(
        "office" not in h["text"] for h in b.search_knowledge("office opens")
    )
    assert b.search_knowledge("office opens", collections=["handbook"])[0]["scope"] == "collection"
    assert a.clear_knowledge() == 1
    assert a.search_knowledge("vault code 4417", scopes=["session"]) == []
    assert b.search_knowledge("metric units")  # clearing the session left the user's sources
    assert b.clear_knowledge("user") == 1
    assert a.list_knowledge() == []
    assert b.clear_knowledge("collection", "handbook") == 1


def test_chunkers_progress_and_config_errors(knowledge_server: ServerThread) -> None:
    s = session(
        knowledge_server,
        knowledge_config={"chunker": {"type": "token", "chunk_size": 20, "chunk_overlap": 5}},
    )
    events: list[dict[str, Any]] = []
    words = ["river", "stone", "cloud", "maple", "orbit"]  # one model token each
    result = s.add_knowledge(" ".join(words[n % 5] for n in range(100)), on_progress=events.append)
    assert result["source"]["chunker"] == {"type": "token", "chunk_size": 20, "chunk_overlap": 5}
    assert result["source"]["chunk_count"] == 7  # windows start every 15 tokens
    stages = [e["stage"] for e in events]
    assert "chunking" in stages and "embedding" in stages and "storing" in stages
    assert events[-1]["chunks_embedded"] == events[-1]["chunks_total"] == 7
    sentence = session(knowledge_server, knowledge_config={"chunker": {"type": "sentence", "chunk_size": 16}})
    many = " ".join(f"Sentence number {n} is short." for n in range(12))
    assert sentence.add_knowledge(many)["source"]["chunk_count"] >= 3
    with pytest.raises(InvalidArgument) as unknown:
        session(knowledge_server, knowledge_config={"chunker": {"type": "token"}, "colour": "blue"})
    assert "colour" in str(unknown.value)
    with pytest.raises(InvalidArgument) as unknown_type:
        session(knowledge_server, knowledge_config={"chunker": {"type": "paragraphs"}})
    assert "paragraphs" in str(unknown_type.value)
    semantic = session(
        knowledge_server, knowledge_config={"chunker": {"type": "semantic", "chunk_size": 200}}
    )
    cooking = [
        "Preheat the oven to two hundred degrees.",
        "Knead the bread dough for ten minutes.",
        "Let the dough rise until it doubles in size.",
        "Bake the loaf until the crust is golden brown.",
    ]
    space = [
        "The Andromeda galaxy is approaching the Milky Way.",
        "Telescopes reveal distant nebulae and star clusters.",
        "Astronomers measure the redshift of faraway galaxies.",
    ]
    made = semantic.add_knowledge(" ".join(cooking + space))
    assert made["source"]["chunker"]["type"] == "semantic"
    assert made["source"]["chunker"]["semantic_threshold"] == pytest.approx(0.25)
    texts = [h["text"] for h in semantic.search_knowledge("oven dough galaxy telescope", limit=10)]
    assert len(texts) >= 2
    assert not any("oven" in t and "galaxy" in t for t in texts), texts
    assert any(cooking[0] in t for t in texts) and any(space[0] in t for t in texts)
    with pytest.raises(InvalidArgument) as threshold:
        session(
            knowledge_server, knowledge_config={"chunker": {"type": "semantic", "semantic_threshold": 1.5}}
        ).add_knowledge("text")
    assert "semantic_threshold" in str(threshold.value)
    bad = session(
        knowledge_server,
        knowledge_config={"chunker": {"type": "token", "chunk_size": 16, "chunk_overlap": 16}},
    )
    with pytest.raises(InvalidArgument) as overlap:
        bad.add_knowledge("text")
    assert "chunk_overlap" in str(overlap.value)


def test_file_upload_reports_receiving_progress(knowledge_server: ServerThread, tmp_path: Path) -> None:
    # Big token windows: many upload chunks, few embeddings.
    s = session(knowledge_server, knowledge_config={"chunker": {"type": "token", "chunk_size": 8192}})
    path = tmp_path / "long.txt"
    path.write_text("Paragraph about glaciers and moraines.\n\n" * 20_000)  # ~800 KB: several upload chunks
    events: list[dict[str, Any]] = []
    result = s.add_knowledge(str(path), on_progress=events.append)
    received = [e["bytes_read"] for e in events if e["stage"] == "receiving"]
    assert received[-1] == path.stat().st_size and len(received) >= 3
    assert result["source"]["size_bytes"] == path.stat().st_size


def test_chunk_positions_and_heading_paths() -> None:
    text = "# A\n\nalpha beta.\n\n## B\n\ngamma delta.\n\n# C\n\nepsilon."
    chunks = chunking.split(text, chunking.ChunkerConfig(chunking.RECURSIVE, 16, 0))
    assert [c.heading_path for c in chunks] == [("A",), ("A", "B"), ("C",)]
    assert all(text[c.start : c.end].strip() == c.text for c in chunks)
    windows = chunking.split("a b c d e f g h", chunking.ChunkerConfig(chunking.TOKEN, 4, 2))
    assert [w.text for w in windows] == ["a b c d", "c d e f", "e f g h"]


def _document() -> str:
    """Markdown with rare words (several word pieces each), punctuation, accents and CJK, a word
    longer than WordPiece accepts, long and short paragraphs."""
    words = [
        "the",
        "tokenization",
        "of",
        "unbelievably",
        "microservices",
        "Kubernetes",
        "PostgreSQL",
        "café",
        "東京",
        "e-mail",
        "3.14",
    ]
    paragraphs = [
        " ".join(
            words[(n * 7 + k) % len(words)] + ("." if k % 9 == 8 else "") for k in range(n * 13 % 300 + 5)
        )
        for n in range(60)
    ]
    return (
        "# Guide\n\n"
        + "\n\n".join(paragraphs[:40])
        + "\n\n## Part\n\n"
        + "x" * 300
        + " "
        + "\n\n".join(paragraphs[40:])
    )


@pytest.mark.parametrize("strategy", [chunking.TOKEN, chunking.SENTENCE, chunking.RECURSIVE])
@pytest.mark.parametrize(("size", "overlap"), [(16, 4), (64, 0), (254, 31)])
def test_chunks_never_exceed_chunk_size_in_model_tokens(strategy: int, size: int, overlap: int) -> None:
    # Sizes are the embedding model's word pieces: "tokenization" is two, "東京" two, a 300-letter
    # word one ([UNK]); a chunk re-tokenized on its own never has more than chunk_size of them.
    text = _document()
    chunks = chunking.split(text, chunking.ChunkerConfig(strategy, size, overlap))
    assert chunks
    assert max(count_tokens(c.text) for c in chunks) <= size
    assert all(text[c.start : c.end].strip() == c.text for c in chunks)
    # Every token of the text is in some chunk (nothing dropped between windows or pieces).
    starts = sorted({c.start + s for c in chunks for s, _ in token_spans(text[c.start : c.end])})
    assert starts == [s for s, _ in token_spans(text)]


def test_token_windows_start_and_end_between_words() -> None:
    # "unbelievably" is several word pieces: windows never cut it, so no chunk starts with "##" pieces.
    text = " ".join(["unbelievably"] * 50)
    pieces = count_tokens("unbelievably")
    assert pieces > 1
    windows = chunking.split(text, chunking.ChunkerConfig(chunking.TOKEN, 16, 5))
    assert all(set(w.text.split()) == {"unbelievably"} for w in windows)
    assert all(count_tokens(w.text) <= 16 for w in windows)
    # A word longer than a window (17 pieces, windows of 16) is cut inside, the only way forward.
    word = "Pneumonoultramicroscopicsilicovolcanoconiosis"
    cut = chunking.split(word, chunking.ChunkerConfig(chunking.TOKEN, 16, 0))
    assert len(cut) == 2 and "".join(w.text for w in cut) == word


def test_default_chunk_size_is_what_the_model_embeds() -> None:
    config = chunking.chunker_config(0, 0, None)
    assert config.chunk_size == EMBEDDABLE_TOKENS == 254
    assert config.chunk_overlap == 254 // 8


async def test_concurrent_adds_of_one_source_make_one_source(knowledge_server: ServerThread) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    clients = [AsyncSession("same", user_id=user, address=knowledge_server.address) for _ in range(8)]
    results = await asyncio.gather(
        *(c.add_knowledge("Penguins huddle to keep warm in Antarctic winter.") for c in clients)
    )
    assert len({r["source"]["id"] for r in results}) == 1
    assert sorted(r["outcome"] for r in results) == ["created"] + ["unchanged"] * 7
    assert len(await clients[0].list_knowledge()) == 1
    hits = await clients[0].search_knowledge("penguins huddle", limit=10)
    assert len(hits) == 1


def test_vectors_live_in_one_partition_per_scope_and_old_collections_are_moved(tmp_path: Path) -> None:
    server = ServerThread(_settings(tmp_path)).start()
    try:
        s = session(server, "s1", "ana")
        s.add_knowledge("Session note: the boiler is serviced in May")
        s.add_knowledge("User note: ana prefers metric units", scope="user")
        assert server.host is not None
        service = server.host.knowledge
        index = service.index
        partitions = server.call(index.collections(partition_prefix("knowledge:default")))
        assert len(partitions) == 2  # the session's and the user's
        # A deployment from before partitions kept every vector of the app in one collection.
        for coll in partitions:
            entries = server.call(index.entries(coll, 0, 100))
            server.call(
                index.upsert(
                    "knowledge:default",
                    [e.id for e in entries],
                    [e.vector for e in entries],
                    [e.metadata for e in entries],
                )
            )
            server.call(index.drop(coll))
        assert server.call(service.migrate_vectors()) == 2  # what start-up does
        assert not server.call(index.exists("knowledge:default"))
        assert server.call(index.collections(partition_prefix("knowledge:default"))) == partitions
        assert s.search_knowledge("when is the heating maintained", limit=1)[0]["text"].startswith("Session")
    finally:
        server.stop()
