"""`sessionkit knowledge add|search|ls|rm|reindex` as a user runs them, against a real server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessionkit import Session
from sessionkit_server.common.config import ServerSettings
from sessionkit_server.retrieval.vector_index import partition_prefix
from tests.knowledge.support import vector_ids
from tests.servers import ServerThread, child_env


@pytest.fixture
def knowledge_server(tmp_path: Path) -> Iterator[ServerThread]:
    settings = ServerSettings(
        port=0, data_dir=tmp_path / "data", services=["state", "knowledge"], log_format="text"
    )
    thread = ServerThread(settings).start()
    yield thread
    thread.stop()


def cli(server: ServerThread, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sessionkit.cli", "knowledge", *args, "--address", server.address],
        env=child_env(COLUMNS="200"),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_knowledge_add_search_ls_rm(knowledge_server: ServerThread, tmp_path: Path) -> None:
    doc = tmp_path / "birds.md"
    doc.write_text("# Birds\n\n## Owls\n\nBarn owls hunt voles at night by sound alone.\n")
    added = cli(knowledge_server, "add", str(doc), "--user", "ana")
    assert added.returncode == 0, added.stderr
    assert "created file source 'birds.md'" in added.stdout
    text = cli(knowledge_server, "add", "Swifts sleep while flying.", "--user", "ana")
    assert text.returncode == 0 and "created text source" in text.stdout, text.stderr
    found = cli(knowledge_server, "search", "owls hunting at night", "--user", "ana", "--limit", "1")
    assert found.returncode == 0, found.stderr
    assert "Barn owls" in found.stdout and "Birds > Owls" in found.stdout and "Swifts" not in found.stdout
    listed = cli(knowledge_server, "ls", "--user", "ana")
    assert "2 sources" in listed.stdout
    # The SDK sees what the CLI added (same session "cli").
    assert Session("cli", user_id="ana", address=knowledge_server.address).search_knowledge("barn owls")
    removed = cli(knowledge_server, "rm", "birds.md", "--user", "ana")
    assert removed.returncode == 0 and "deleted" in removed.stdout, removed.stderr
    assert "1 sources" in cli(knowledge_server, "ls", "--user", "ana").stdout
    missing = cli(knowledge_server, "add", str(tmp_path / "nope.xyz.txt.missing"), "--user", "ana")
    assert missing.returncode == 0  # not a file: taken as text
    bad = cli(knowledge_server, "add", "x", "--scope", "galaxy")
    assert bad.returncode == 1 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr
    folder = tmp_path / "guides"
    (folder / "ferries").mkdir(parents=True)
    (folder / "owls.md").write_text("Tawny owls call at dusk.")
    (folder / "ferries" / "night.txt").write_text("The night ferry leaves at ten.")
    batch = cli(knowledge_server, "add", str(folder), "--user", "bo")
    assert batch.returncode == 0, batch.stderr
    assert "2 files from" in batch.stdout and "2 created" in batch.stdout
    assert "2 sources" in cli(knowledge_server, "ls", "--user", "bo").stdout
    named = cli(knowledge_server, "add", str(folder), "--user", "bo", "--name", "x")
    assert named.returncode == 1 and "--name applies to one source" in named.stderr


def test_knowledge_reindex_rebuilds_lost_vectors(knowledge_server: ServerThread) -> None:
    s = Session("s1", user_id="ana", address=knowledge_server.address)
    s.add_knowledge("Barn owls hunt voles at night by sound alone.")
    s.add_knowledge("Swifts sleep while flying.", scope="user")
    other_app = Session("s1", user_id="ana", app_name="zoo", address=knowledge_server.address)
    other_app.add_knowledge("Penguins huddle in the Antarctic winter.")
    assert knowledge_server.host is not None
    index = knowledge_server.host.knowledge.index
    knowledge_server.call(knowledge_server.host.knowledge.vectors.settle())  # written behind the replies
    for coll in knowledge_server.call(index.collections(partition_prefix("knowledge:default"))):
        knowledge_server.call(index.drop(coll))  # the vectors are lost
    assert knowledge_server.call(vector_ids(index, "default")) == set()
    rebuilt = cli(knowledge_server, "reindex")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "2 chunks scanned, 2 vectors written" in rebuilt.stdout
    assert len(knowledge_server.call(vector_ids(index, "default"))) == 2
    hits = s.search_knowledge("nocturnal birds of prey", limit=1)  # no shared word: a semantic match
    assert hits and hits[0]["text"].startswith("Barn owls") and hits[0]["scores"]["semantic"] > 0
    everything = cli(knowledge_server, "reindex", "--all-apps")
    assert "3 chunks scanned, 3 vectors written" in everything.stdout, everything.stderr
