"""Fuzzing of knowledge ingestion past its first checks (issue 14): AddKnowledgeSource with hostile text
(NUL and control characters, invalid UTF-8 and lone surrogates on the wire, one 50,000-character word,
sizes at and just past the server's byte limit, multi-byte characters straddling it) and with URLs of
a real web server of this test (real PDF, DOCX, HTML, Markdown, CSV and JSON files, the same bytes
mislabelled, truncated or garbage, bodies over the size limit or shorter than declared, gzip that is
not gzip, error statuses, redirect loops and redirects to a bad port, a malformed URL or a private
address); UploadKnowledgeFile with the same real files, truncated, bit-flipped or over the limit, cut
into chunks at random points, under names and declared types, sizes and hashes that are right or
wrong, and streams with no header or a second one.

For every request, as in test_grpc_fuzz.py: a documented code (never INTERNAL or UNKNOWN), with the
sessionkit error details when refused, within the deadline, and a refused request writes nothing (the
store dumped before and after); an accepted one ends with exactly one result. SQLite only: the stores'
differences are covered by the PostgreSQL run of test_grpc_fuzz.py."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import itertools
import os
import threading
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from sessionkit.v1 import common_pb2, knowledge_pb2
from tests.fuzz.conftest import MAX_FILE_BYTES, MAX_TEXT_BYTES, Services
from tests.fuzz.proto_strategies import _length_delimited
from tests.fuzz.store_dump import difference
from tests.fuzz.test_grpc_fuzz import DEADLINE, DOCUMENTED, FUZZ_SEED, has_error_info, status_of
from tests.knowledge.support import make_files

pytestmark = pytest.mark.slow

#: Examples per ingestion RPC in CI's bounded run; SESSIONKIT_FUZZ_EXAMPLES for a longer one.
EXAMPLES = int(os.environ.get("SESSIONKIT_FUZZ_EXAMPLES", "0")) or 16
REF = common_pb2.SessionRef(user_id="fuzz-ingest", session_id="s1")
ADD = "/sessionkit.v1.KnowledgeService/AddKnowledgeSource"
UPLOAD = "/sessionkit.v1.KnowledgeService/UploadKnowledgeFile"
OUTCOMES: Counter[tuple[str, str]] = Counter()


# -- the files and the web server serving them --------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, content type) of real files of every supported format, and broken ones."""
    made = make_files(tmp_path_factory.mktemp("ingest-files"))
    types = {
        ".txt": "text/plain",
        ".md": "text/markdown",
        ".html": "text/html",
        ".csv": "text/csv",
        ".json": "application/json",
        ".pdf": "application/pdf",
        ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    }
    out = {name: (path.read_bytes(), types[Path(name).suffix]) for name, (path, _, _) in made.items()}
    pdf = out["guide.pdf"][0]
    out["truncated.pdf"] = (pdf[: len(pdf) // 2], "application/pdf")
    out["flipped.docx"] = (_flip(out["orchard.docx"][0]), out["orchard.docx"][1])
    out["garbage.pdf"] = (bytes(range(256)) * 8, "application/pdf")
    out["nul.txt"] = (b"tea\x00time \xff\xfe invalid utf-8 \xed\xa0\x80 surrogate", "text/plain")
    out["big.txt"] = (b"word " * (MAX_FILE_BYTES // 5 + 1), "text/plain")  # just over the limit
    out["empty.txt"] = (b"", "text/plain")
    return out


def _flip(data: bytes) -> bytes:
    """Every 97th byte inverted: a zip (DOCX) whose entries no longer inflate."""
    return bytes(b ^ 0xFF if i % 97 == 50 else b for i, b in enumerate(data))


class _Web(http.server.BaseHTTPRequestHandler):
    files: dict[str, tuple[bytes, str]] = {}

    def do_GET(self) -> None:
        path = self.path
        if path.startswith("/f/"):
            body, kind = self.files[path[3:]]
            return self._send(200, body, kind)
        if path.startswith("/mislabelled/"):  # PDF bytes as HTML, HTML as PDF, ...
            body, _ = self.files[path[len("/mislabelled/") :]]
            return self._send(200, body, "application/pdf" if body[:4] != b"%PDF" else "text/html")
        if path == "/short-body":  # declares more than it sends, then closes
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"only this")
            return None
        if path == "/over-declared":  # a Content-Length over the size limit
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(MAX_FILE_BYTES * 10))
            self.end_headers()
            return None
        if path == "/not-gzip":
            return self._send(200, b"plain text, not gzip", "text/plain", {"Content-Encoding": "gzip"})
        if path == "/gzip-big":  # small on the wire, over the limit once inflated
            return self._send(
                200, gzip.compress(b"a" * MAX_FILE_BYTES * 4), "text/plain", {"Content-Encoding": "gzip"}
            )
        if path.startswith("/status/"):
            return self._send(int(path[len("/status/") :]), b"no", "text/plain")
        redirects = {
            "/redirect/loop": "/redirect/loop",
            "/redirect/bad-port": "http://127.0.0.1:99999/x",
            "/redirect/malformed": "http://[::1/x",
            "/redirect/private": "http://10.0.0.1/x",
            "/redirect/scheme": "file:///etc/passwd",
            "/redirect/file": "/f/guide.pdf",
        }
        if path in redirects:
            self.send_response(302)
            self.send_header("Location", redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return self._send(404, b"not found", "text/plain")

    def _send(self, status: int, body: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def web(files: dict[str, tuple[bytes, str]]) -> Iterator[str]:
    _Web.files = files
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Web)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def channel(services: Services) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(
        services.server.address, options=[("grpc.max_send_message_length", 64 << 20)]
    ) as opened:
        yield opened


@pytest.fixture(scope="module", autouse=True)
def report_outcomes(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and OUTCOMES:
        reporter.write_line(f"\ningestion fuzz: {sum(OUTCOMES.values())} requests (seed {FUZZ_SEED})")
        for (name, code), n in sorted(OUTCOMES.items()):
            reporter.write_line(f"  {name}: {code} {n}")


# -- strategies ---------------------------------------------------------------------------------------


def _texts() -> st.SearchStrategy[str]:
    at_limit = "tea " * (MAX_TEXT_BYTES // 4)
    return st.one_of(
        st.sampled_from(
            [
                "I like green tea in the morning.",
                "a\x00b tea\x00",
                "\x01\x02\x07\x1b[31m control \x7f",
                "\u202eevil\u202c \ufeff bom \U0001f600 emoji",
                " \n\t\n ",
                "#" * 3000 + " heading",
                "# A\n## B\n### C\n" * 400,
                "x" * 50_000,  # one word, no place to split
                at_limit,  # exactly at the byte limit: accepted
                at_limit + "t",  # one byte over
                "é" * (MAX_TEXT_BYTES // 2 + 1),  # under the limit in characters, over in bytes
            ]
        ),
        st.text(st.characters(exclude_categories=["Cs"]), max_size=200),
    )


def _header(name: str, body: bytes, kind: str) -> st.SearchStrategy[knowledge_pb2.KnowledgeFileHeader]:
    """A header that is right about the file, or wrong in one field (one fault at a time, so a wrong
    field is what refuses the upload, and half the uploads reach ingestion)."""
    digest = hashlib.sha256(body).hexdigest()
    right: dict[str, Any] = {
        "file_name": name,
        "content_type": kind,
        "size_bytes": len(body),
        "sha256": digest,
        "scope": 1,
    }
    wrong: dict[str, list[Any]] = {
        "file_name": ["no-extension", "x.exe", "../../etc/" + name, "a\x00b.txt", ""],
        "content_type": ["", "application/pdf", "text/html", "image/png", "not a type"],
        "size_bytes": [0, len(body) + 1, max(0, len(body) - 1), 2**62, -1],
        "sha256": ["", "0" * 64, "not hex"],
        "scope": [2, 3, 99],
    }

    def build(fault: str, index: int) -> knowledge_pb2.KnowledgeFileHeader:
        fields = dict(right)
        if fault in wrong:
            fields[fault] = wrong[fault][index % len(wrong[fault])]
        scope = fields.pop("scope")
        return knowledge_pb2.KnowledgeFileHeader(
            session=REF, scope=knowledge_pb2.KnowledgeScope(kind=scope), report_progress=True, **fields
        )

    return st.builds(build, st.sampled_from(["none"] * 5 + sorted(wrong)), st.integers(0, 4))


def _cut(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(len(body), c) for c in cuts})
    edges = [0, *points, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges) if b > a]


def _uploads(files: dict[str, tuple[bytes, str]]) -> st.SearchStrategy[list[bytes]]:
    """The request messages of one upload, serialized."""

    @st.composite
    def build(draw: st.DrawFn) -> list[bytes]:
        name = draw(st.sampled_from(sorted(files)))
        body, kind = files[name]
        header = draw(_header(name, body, kind))
        chunks = _cut(body, draw(st.lists(st.integers(0, max(1, len(body))), max_size=3)))
        messages = [knowledge_pb2.UploadKnowledgeFileRequest(header=header)]
        messages += [knowledge_pb2.UploadKnowledgeFileRequest(chunk=c) for c in chunks]
        shape = draw(st.sampled_from(["ok"] * 6 + ["no-header", "two-headers"]))
        if shape == "no-header":
            messages = messages[1:] or [knowledge_pb2.UploadKnowledgeFileRequest(chunk=b"x")]
        elif shape == "two-headers":
            messages.insert(min(2, len(messages)), knowledge_pb2.UploadKnowledgeFileRequest(header=header))
        return [m.SerializeToString() for m in messages]

    return build()


def _adds(web: str) -> st.SearchStrategy[bytes]:
    routes = [f"/f/{n}" for n in ("guide.pdf", "orchard.docx", "page.html", "readme.md", "trains.csv")]
    routes += [f"/f/{n}" for n in ("config.json", "truncated.pdf", "flipped.docx", "garbage.pdf")]
    routes += ["/f/nul.txt", "/f/big.txt", "/f/empty.txt", "/mislabelled/guide.pdf", "/mislabelled/page.html"]
    routes += ["/short-body", "/over-declared", "/not-gzip", "/gzip-big", "/status/404", "/status/500"]
    routes += [f"/redirect/{r}" for r in ("loop", "bad-port", "malformed", "private", "scheme", "file")]

    def request(scope: Any, content_type: str, source: Any) -> bytes:
        message = knowledge_pb2.AddKnowledgeSourceRequest(
            session=REF,
            scope=knowledge_pb2.KnowledgeScope(kind=scope),
            content_type=content_type,
            report_progress=True,
        )
        kind, value = source
        if kind == "text":
            message.text = value
        elif kind == "url":
            message.url = value
        wire = message.SerializeToString()
        if kind == "bad-utf8":  # a proto library refuses to build these: the bytes are put on the wire
            wire += _length_delimited(3, value)
        return wire

    sources = st.one_of(
        st.tuples(st.just("text"), _texts()),
        st.tuples(st.just("url"), st.sampled_from(routes).map(lambda r: web + r)),
        st.tuples(
            st.just("bad-utf8"),
            st.sampled_from([b"tea \xed\xa0\x80 lone surrogate", b"\xff\xfe", b"ok then \xc3\x28"]),
        ),
    )
    return st.builds(
        request,
        st.sampled_from([1, 1, 2]),
        st.sampled_from(["", "", "text/markdown", "text/plain", "application/pdf", "bogus"]),
        sources,
    )


# -- the tests ----------------------------------------------------------------------------------------


Outcome = tuple[grpc.StatusCode, str, Any, list[bytes]]


def _call(channel: grpc.Channel, path: str, messages: list[bytes]) -> Outcome:
    ident = lambda b: b  # noqa: E731 - requests are already serialized
    try:
        if path == ADD:
            stream = channel.unary_stream(path, request_serializer=ident, response_deserializer=ident)(
                messages[0], timeout=DEADLINE
            )
        else:
            stream = channel.stream_stream(path, request_serializer=ident, response_deserializer=ident)(
                iter(messages), timeout=DEADLINE
            )
        return grpc.StatusCode.OK, "", None, list(stream)
    except grpc.RpcError as error:
        return error.code(), error.details() or "", status_of(error), []


def _check(services: Services, channel: grpc.Channel, path: str, messages: list[bytes]) -> None:
    before = services.dump()
    code, details, status, replies = _call(channel, path, messages)
    OUTCOMES[path.rsplit("/", 1)[1], code.name] += 1
    assert code in DOCUMENTED | {grpc.StatusCode.OK}, f"{path}: {code} {details}"
    assert code != grpc.StatusCode.DEADLINE_EXCEEDED, f"{path} hung: {details}"
    if code == grpc.StatusCode.OK:
        response = (
            knowledge_pb2.AddKnowledgeSourceResponse
            if path == ADD
            else knowledge_pb2.UploadKnowledgeFileResponse
        )
        events = [response.FromString(r).WhichOneof("event") for r in replies]
        assert events and events[-1] == "result" and events.count("result") == 1, events
        return
    if "message larger than max" not in details:
        assert has_error_info(status), f"{path}: {code} without ErrorInfo: {details}"
    changed = difference(before, services.dump())
    assert not changed, f"{path} refused ({code.name} {details}) but wrote:\n{changed}"


def _seed(path: str) -> int:
    return zlib.crc32(f"{FUZZ_SEED}:ingestion:{path}".encode())


def test_added_text_and_urls_get_documented_answers_and_refusals_write_nothing(
    services: Services, channel: grpc.Channel, web: str
) -> None:
    @seed(_seed(ADD))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(message=_adds(web))
    def run(message: bytes) -> None:
        _check(services, channel, ADD, [message])

    run()


def test_uploaded_files_get_documented_answers_and_refusals_write_nothing(
    services: Services, channel: grpc.Channel, files: dict[str, tuple[bytes, str]]
) -> None:
    @seed(_seed(UPLOAD))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(messages=_uploads(files))
    def run(messages: list[bytes]) -> None:
        _check(services, channel, UPLOAD, messages)

    run()
