"""One client process of tests/faults/test_kill_under_load.py: until the stop file exists, it keeps
writing to one shared session (an increment of a shared counter, an append to its own list, an event
of its own), each write with its own idempotency key, repeated with that key until acknowledged, and
records each acknowledged write as one line of its ledger file (``inc``, ``app N``, ``evt N``).

    python -m tests.faults.load_client ADDRESS SESSION_ID INDEX STOP_FILE LEDGER_FILE
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

from sessionkit.state_client import SessionRef
from tests.cluster import support
from tests.cluster.test_faults import acknowledged

USER = "load"


async def run(address: str, session_id: str, index: int, stop: Path, ledger: Path) -> None:
    state = support.state(address, deadline=10)
    ref = SessionRef("default", USER, session_id)
    with ledger.open("a", buffering=1) as out:
        n = 0
        while not await asyncio.to_thread(stop.exists):
            key = uuid.uuid4().hex
            await acknowledged(lambda k=key: state.increment(ref, "counter", 1, idempotency_key=k))
            out.write("inc\n")
            key = uuid.uuid4().hex
            await acknowledged(lambda k=key, v=n: state.append(ref, f"list-{index}", [v], idempotency_key=k))
            out.write(f"app {n}\n")
            key = uuid.uuid4().hex
            await acknowledged(
                lambda k=key, v=n: state.append_event(
                    ref, "user", f"client {index} event {v}", author=f"client-{index}", idempotency_key=k
                )
            )
            out.write(f"evt {n}\n")
            n += 1


if __name__ == "__main__":
    address, session_id, index, stop, ledger = sys.argv[1:6]
    asyncio.run(run(address, session_id, int(index), Path(stop), Path(ledger)))
