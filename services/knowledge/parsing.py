"""Text extraction from the supported formats: plain text, markdown, PDF (pypdf), HTML (stdlib
html.parser), DOCX (python-docx), CSV and JSON. Structured formats are rendered as markdown headings
where they have headings (HTML h1-h6, DOCX "Heading N" styles), so the recursive chunker keeps heading
paths. Anything unknown or unreadable raises InvalidArgument (reason UNSUPPORTED_CONTENT_TYPE) naming
the source."""

from __future__ import annotations

import csv
import io
import json
import posixpath
from dataclasses import dataclass, field
from html.parser import HTMLParser

from sessionkit import reasons
from sessionkit.errors import InvalidArgument

TYPES_BY_EXTENSION = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".pdf": "application/pdf",
    ".html": "text/html",
    ".htm": "text/html",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".csv": "text/csv",
    ".json": "application/json",
}
SUPPORTED = frozenset(TYPES_BY_EXTENSION.values())


@dataclass
class Extracted:
    """A source's text; ``pages`` are (1-based page, start offset in ``text``) for paged formats."""

    text: str
    title: str = ""
    pages: list[tuple[int, int]] = field(default_factory=list)

    def page_at(self, offset: int) -> int:
        page = 0
        for number, start in self.pages:
            if start > offset:
                break
            page = number
        return page


def unsupported(name: str, problem: str) -> InvalidArgument:
    return reasons.UNSUPPORTED_CONTENT_TYPE.error(name=name, problem=problem, metadata={"name": name})


def detect_type(name: str, declared: str, data: bytes) -> str:
    """The MIME type: the declared one (parameters dropped) if given, else from the file's extension,
    else sniffed (%PDF, a ZIP is taken for DOCX, else UTF-8 text)."""
    mime = declared.split(";", 1)[0].strip().lower()
    if mime:
        return "text/plain" if mime == "application/octet-stream" and _is_text(data) else mime
    extension = posixpath.splitext(name.lower())[1]
    if extension in TYPES_BY_EXTENSION:
        return TYPES_BY_EXTENSION[extension]
    if data.startswith(b"%PDF"):
        return "application/pdf"
    if data.startswith(b"PK\x03\x04"):
        return TYPES_BY_EXTENSION[".docx"]
    if not extension and _is_text(data):
        return "text/plain"
    raise unsupported(name, f"unknown file type {extension or '(no extension)'!r}")


def _is_text(data: bytes) -> bool:
    try:
        data[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return len(data) > 4096 and _utf8_prefix_ok(data[:4096])
    return b"\x00" not in data[:4096]


def _utf8_prefix_ok(data: bytes) -> bool:
    # A multi-byte character may be cut at the 4096-byte boundary.
    try:
        data[:-3].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _decode(name: str, data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise unsupported(name, f"not UTF-8 text (byte {error.start})") from None
    if "\x00" in text:
        raise unsupported(name, "contains NUL characters (a binary file?)")
    return text


def extract(name: str, content_type: str, data: bytes) -> Extracted:
    if content_type not in SUPPORTED:
        raise unsupported(name, f"unsupported content type {content_type!r}")
    try:
        if content_type == "application/pdf":
            return _pdf(data)
        if content_type == TYPES_BY_EXTENSION[".docx"]:
            return _docx(data)
        text = _decode(name, data)
        if content_type == "text/html":
            return _html(text)
        if content_type == "text/csv":
            return Extracted(_csv(text))
        if content_type == "application/json":
            return Extracted(json.dumps(json.loads(text), indent=2, ensure_ascii=False))
        return Extracted(text, _first_heading(text) if content_type == "text/markdown" else "")
    except InvalidArgument:
        raise
    except Exception as error:  # every parser's own errors: the content is corrupt
        raise unsupported(
            name, f"corrupt or unreadable {content_type} ({type(error).__name__}: {error})"
        ) from None


def _first_heading(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def _pdf(data: bytes) -> Extracted:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data), strict=False)
    parts: list[str] = []
    pages: list[tuple[int, int]] = []
    offset = 0
    for number, page in enumerate(reader.pages, start=1):
        text = (page.extract_text() or "").strip()
        pages.append((number, offset))
        parts.append(text)
        offset += len(text) + 2
    title = ""
    if reader.metadata is not None and reader.metadata.title:
        title = str(reader.metadata.title)
    return Extracted("\n\n".join(parts), title, pages)


def _docx(data: bytes) -> Extracted:
    import docx

    document = docx.Document(io.BytesIO(data))
    lines: list[str] = []
    title = document.core_properties.title or ""
    for paragraph in document.paragraphs:
        text = paragraph.text.strip()
        if not text:
            continue
        style = (paragraph.style.name if paragraph.style is not None else "") or ""
        if style.startswith("Heading") and style[7:].strip().isdigit():
            lines.append("#" * min(6, int(style[7:].strip())) + " " + text)
            title = title or text
        elif style == "Title":
            lines.append("# " + text)
            title = title or text
        else:
            lines.append(text)
    for table in document.tables:
        for row in table.rows:
            lines.append(" | ".join(cell.text.strip() for cell in row.cells))
    return Extracted("\n\n".join(lines), title)


def _csv(text: str) -> str:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return ""
    header, body = rows[0], rows[1:]
    if not body:
        return ", ".join(header)
    out = []
    for row in body:
        out.append("; ".join(f"{h}: {v}" for h, v in zip(header, row, strict=False)))
    return "\n".join(out)


class _HTMLText(HTMLParser):
    SKIP = frozenset({"script", "style", "noscript", "template", "head"})
    BLOCK = frozenset({"p", "div", "li", "br", "tr", "section", "article", "pre", "blockquote", "table"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.title: list[str] = []
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        elif tag in self.SKIP:
            self.skip += 1
        elif len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self.out.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in self.BLOCK:
            self.out.append("\n\n" if tag == "p" else "\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        elif tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif (len(tag) == 2 and tag[0] == "h" and tag[1] in "123456") or tag == "p":
            self.out.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
        elif not self.skip:
            # Runs of whitespace become one space; text split by inline tags keeps its spaces.
            words = " ".join(data.split())
            if words:
                lead = " " if data[:1].isspace() else ""
                self.out.append(lead + words + (" " if data[-1:].isspace() else ""))
            elif data:
                self.out.append(" ")


def _html(text: str) -> Extracted:
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    lines = [line.strip() for line in "".join(parser.out).splitlines()]
    body = "\n".join(lines)
    while "\n\n\n" in body:
        body = body.replace("\n\n\n", "\n\n")
    return Extracted(body.strip(), " ".join("".join(parser.title).split()))
