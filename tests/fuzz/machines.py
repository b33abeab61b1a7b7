"""Running a hypothesis state machine the way every model-based suite here does: a fixed seed derived
from SESSIONKIT_FUZZ_SEED (CI runs the same sequences in every clone), a bounded number of sequences
scaled by SESSIONKIT_FUZZ_EXAMPLES, and the seed named on failure."""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable

from hypothesis import HealthCheck, seed, settings
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test

FUZZ_SEED = int(os.environ.get("SESSIONKIT_FUZZ_SEED", "1"))
#: SESSIONKIT_FUZZ_EXAMPLES=N: N / 5 times CI's sequences (CI's fuzz runs 5 examples per RPC).
SCALE = max(1, int(os.environ.get("SESSIONKIT_FUZZ_EXAMPLES", "0")) // 5)


def run_machine(machine: Callable[[], RuleBasedStateMachine], name: str, sequences: int, steps: int) -> None:
    def factory() -> RuleBasedStateMachine:
        return machine()

    derived = zlib.crc32(f"{FUZZ_SEED}:{name}".encode())
    seed(derived)(factory)
    try:
        run_state_machine_as_test(
            factory,
            settings=settings(
                max_examples=sequences * SCALE,
                stateful_step_count=steps,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            ),
        )
    except BaseException as error:
        error.add_note(f"reproduce: SESSIONKIT_FUZZ_SEED={FUZZ_SEED} (hypothesis seed {derived} for {name})")
        raise
