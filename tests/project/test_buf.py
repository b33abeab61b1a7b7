"""buf guards the gRPC contract: `make lint` runs `buf lint` and `buf breaking` against
protos/buf-image.binpb, the last released contract. These tests prove that the breaking check fails
on what would break existing clients (a field renumbered, a field removed) and passes on the
repository's protos."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.node_tools import ROOT, buf, needs_node

pytestmark = needs_node

IMAGE = ROOT / "protos" / "buf-image.binpb"
COMMON = Path("protos/sessionkit/v1/common.proto")


def _buf(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([buf(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def _workspace(tmp_path: Path) -> Path:
    """A copy of the repository's buf workspace (buf.yaml and protos/) to edit."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    return tmp_path


def test_the_protos_pass_lint_and_breaking() -> None:
    for args in (("lint",), ("breaking", "--against", str(IMAGE))):
        done = _buf(*args, cwd=ROOT)
        assert done.returncode == 0, f"buf {' '.join(args)}:\n{done.stdout}{done.stderr}"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # Renumbered: old clients would send user_id as field 2, which the server no longer reads.
        (
            "string user_id = 2;",
            "string user_id = 4;",
            'Previously present field "2" with name "user_id" on message "SessionRef" was deleted.',
        ),
        # Removed without reserving its number: a later field could reuse it with another meaning.
        (
            "string session_id = 3;",
            "",
            'Previously present field "3" with name "session_id" on message "SessionRef" was deleted.',
        ),
    ],
    ids=["renumbered", "removed"],
)
def test_breaking_changes_fail(tmp_path: Path, old: str, new: str, expected: str) -> None:
    workspace = _workspace(tmp_path)
    proto = workspace / COMMON
    text = proto.read_text()
    assert text.count(old) == 1, f"{COMMON} no longer has {old!r}: update this test"
    proto.write_text(text.replace(old, new))

    done = _buf("breaking", "--against", str(IMAGE), cwd=workspace)
    assert done.returncode != 0, f"buf breaking accepted the change:\n{done.stdout}{done.stderr}"
    assert expected in done.stdout, done.stdout + done.stderr
    assert str(COMMON) in done.stdout, done.stdout  # the report names the file to fix
