"""What the knowledge tests share: server settings, an SDK session on a server, the ids of an app's knowledge
vectors, and fixture files in every supported format made here."""

from __future__ import annotations

import csv
import json
import uuid
from pathlib import Path
from typing import Any

from sessionkit import Session
from sessionkit_server.common.config import ServerSettings
from sessionkit_server.retrieval.vector_index import VectorIndex, partition_prefix
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
