"""The PostgreSQL server the postgres tests run against: the configured one (SESSIONKIT_TEST_PG, by
default the project's server on 127.0.0.1:5432), or, when nothing listens there, a throwaway server
started for the test run from the installed PostgreSQL binaries (initdb + pg_ctl in a temporary
directory, on a free port) and removed at its end. With no server and no binaries the run fails naming
what to install.

``SESSIONKIT_TEST_PG=throwaway`` asks for the throwaway server even when one is listening.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
THROWAWAY = "throwaway"
#: initdb and pg_ctl from Debian's packages (several majors can sit side by side) or a source build.
BIN_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin")
#: PostgreSQL refuses to run as root; as root the server runs as this system user (Debian's packages
#: create it).
SERVER_USER = "postgres"


class PostgresUnavailable(RuntimeError):
    """Neither a reachable server nor the binaries to start one."""


def listening(dsn: str, timeout: float = 2.0) -> bool:
    """Whether something accepts TCP connections at the DSN's host and port. A DSN without a host
    (a unix socket) is taken as given."""
    parts = urlsplit(dsn)
    if not parts.hostname:
        return True
    try:
        with socket.create_connection((parts.hostname, parts.port or 5432), timeout=timeout):
            return True
    except OSError:
        return False


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres: the newest packaged major, else PATH's."""

    def major(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (0,)

    candidates = sorted(
        (p for pattern in BIN_GLOBS for p in Path("/").glob(pattern.lstrip("/"))), key=major, reverse=True
    )
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThrowawayServer:
    """A new PostgreSQL cluster in a temporary directory, served on 127.0.0.1 at a free port (user
    postgres, trust auth, database postgres). ``stop``/``start`` restart it on the same port and data
    (fault tests); ``close`` stops it and deletes the directory."""

    def __init__(self, *, crash_safe: bool = False) -> None:
        #: Commits are acknowledged only once their WAL is written (synchronous_commit=on): a crash of
        #: the server (``stop("immediate")``, kill -9) then loses nothing acknowledged. Off by default
        #: (faster); fsync stays off either way (the machine itself does not crash in a test).
        self.crash_safe = crash_safe
        bindir = find_bindir()
        if bindir is None:
            raise PostgresUnavailable(
                "no PostgreSQL binaries (initdb, pg_ctl, postgres) found in "
                f"{', '.join(BIN_GLOBS)} or on PATH: install them (Debian/Ubuntu: apt-get install postgresql)"
            )
        self.bindir = bindir
        self.as_user: dict[str, Any] = {}
        self.root = Path(tempfile.mkdtemp(prefix="sessionkit-pg-", dir=_reachable_tempdir()))
        try:
            if os.geteuid() == 0:
                try:
                    account = pwd.getpwnam(SERVER_USER)
                except KeyError:
                    raise PostgresUnavailable(
                        f"running as root, and PostgreSQL refuses root: a {SERVER_USER!r} system user is "
                        "needed to run the throwaway server (apt-get install postgresql creates it)"
                    ) from None
                os.chown(self.root, account.pw_uid, account.pw_gid)
                self.as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
            self.data, self.log = self.root / "data", self.root / "postgres.log"
            self.port = _free_port()
            _run(
                [
                    bindir / "initdb",
                    "-D",
                    self.data,
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
                self.as_user,
                "initdb",
            )
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> ThrowawayServer:
        # Durability off: the cluster lives for one test run; the tests need its semantics, not its fsync.
        # (A "fast" stop still writes every acknowledged commit out: only a crash would lose them.)
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off" + ("" if self.crash_safe else " -c synchronous_commit=off")
        )
        _run([self.bindir / "pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "60",
              "start"], self.as_user, "pg_ctl start", self.log)  # fmt: skip
        return self

    def stop(self, mode: str = "fast") -> None:
        _run([self.bindir / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop"], self.as_user, "pg_ctl stop")

    def close(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def throwaway_server() -> Iterator[str]:
    """A :class:`ThrowawayServer` for the context's duration; yields its admin DSN."""
    server = ThrowawayServer()
    try:
        server.start()
        yield server.dsn
    finally:
        server.close()


def _reachable_tempdir() -> str:
    """The temporary directory, unless the server user could not reach into it (as root, TMPDIR may
    sit under a private home): then /tmp."""
    base = Path(tempfile.gettempdir()).resolve()
    if os.geteuid() != 0 or all(p.stat().st_mode & 0o001 for p in (base, *base.parents)):
        return str(base)
    return "/tmp"


def _run(args: list[Any], as_user: dict[str, Any], what: str, log: Path | None = None) -> None:
    command = [str(a) for a in args]
    runuser = shutil.which("runuser")
    if as_user and runuser:
        # runuser switches user in the child rather than Popen(user=...): that forces a plain fork(),
        # and a fork of a process whose gRPC threads are busy (a fault test restarting the server
        # under load) can crash the child before it execs.
        command, as_user = [runuser, "-u", SERVER_USER, "--", *command], {}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd="/", **as_user)
    if done.returncode != 0:
        detail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
        raise PostgresUnavailable(f"{what} failed ({done.returncode}): {done.stderr.strip()}\n{detail}")


@contextlib.contextmanager
def admin_dsn(configured: str | None) -> Iterator[str]:
    """The DSN of a PostgreSQL the tests may create databases on: ``configured`` (None: the default)
    when something listens there, else a throwaway server for as long as the context lasts."""
    dsn = configured or DEFAULT_DSN
    if dsn != THROWAWAY and listening(dsn):
        yield dsn
        return
    try:
        with throwaway_server() as started:
            yield started
    except PostgresUnavailable as error:
        where = "" if dsn == THROWAWAY else f"nothing listens at {dsn} (SESSIONKIT_TEST_PG), and "
        raise PostgresUnavailable(f"the postgres tests need PostgreSQL: {where}{error}") from None
