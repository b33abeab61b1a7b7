"""Named crash points for crash-consistency tests: with SESSIONKIT_FAILPOINT=<name> in its environment,
a server process dies (os._exit, like a SIGKILL: no cleanup, no flush) when it reaches that point.
Unset in every normal run, where ``hit`` is a dictionary lookup."""

from __future__ import annotations

import os

_ACTIVE = os.environ.get("SESSIONKIT_FAILPOINT", "")


def hit(name: str) -> None:
    if _ACTIVE and name == _ACTIVE:
        os._exit(137)
