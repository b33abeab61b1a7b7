"""Model-based test of session state (issue 14, item 3): a hypothesis state machine runs random sequences
of save, set, delete, increment, append, clear (with and without the user's and the app's scopes),
compare-and-set with current and stale expected versions, and restoring earlier versions, through the SDK
against the real state service over gRPC, and against a plain in-memory model of the documented
semantics (README "What a session gives you", docs/ERRORS.md). After every step the state every
session reads, its version and its history must equal the model's.

The documented semantics the model encodes:
- keys without a prefix belong to the session; ``user:`` keys are shared by the user's sessions,
  ``app:`` keys by every user of the app; restore_state() is the three merged;
- every write makes one new version of the session it was made through (also a write to a shared
  scope); a stale expected_version raises StateConflict and writes nothing;
- increment counts a missing key as 0 and refuses a non-number (FailedPrecondition) or a result beyond
  +/-2**53 (InvalidArgument); append counts a missing key as [] and refuses a non-list;
- save_state(data) replaces the session's own keys and sets the scoped keys in data;
- clear_state() empties the session's own keys (and, when asked, the user's or the app's);
- the history keeps the session's own keys of the last ``history_limit`` versions (100); restoring
  one makes its keys current as a new version; a version not kept is NotFound.

CI runs a bounded number of sequences (seeded from SESSIONKIT_FUZZ_SEED); SESSIONKIT_FUZZ_EXAMPLES=N
runs N times as many."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sessionkit import Session
from sessionkit.errors import FailedPrecondition, InvalidArgument, NotFound, StateConflict
from tests.fuzz.conftest import Services
from tests.fuzz.machines import run_machine

pytestmark = pytest.mark.slow

HISTORY_LIMIT = 100  # the server's default (SESSIONKIT_HISTORY_LIMIT)
MAX_SAFE = 2**53

#: Two sessions of one user (sharing user: keys) and one of another user, all of one app.
SESSIONS = [("u1", "a"), ("u1", "b"), ("u2", "c")]
KEYS = ["x", "y", "user:x", "user:y", "app:x"]
VALUES = st.one_of(
    st.integers(-5, 5),
    st.sampled_from([MAX_SAFE, -MAX_SAFE, 0.5]),
    st.text("ab", max_size=2),
    st.lists(st.integers(0, 3), max_size=2),
    st.booleans(),
    st.none(),
)


def _scope(key: str) -> str:
    return key.split(":", 1)[0] if key.startswith(("user:", "app:")) else ""


class StateModel:
    """The documented semantics, as plain dicts."""

    def __init__(self) -> None:
        self.own: dict[str, dict[str, Any]] = {s: {} for _, s in SESSIONS}
        self.user: dict[str, dict[str, Any]] = {"u1": {}, "u2": {}}
        self.app: dict[str, Any] = {}
        self.version = {s: 0 for _, s in SESSIONS}
        self.history: dict[str, dict[int, dict[str, Any]]] = {s: {} for _, s in SESSIONS}

    def user_of(self, session: str) -> str:
        return next(u for u, s in SESSIONS if s == session)

    def target(self, session: str, key: str) -> tuple[dict[str, Any], str]:
        scope = _scope(key)
        if scope == "user":
            return self.user[self.user_of(session)], key[5:]
        if scope == "app":
            return self.app, key[4:]
        return self.own[session], key

    def read(self, session: str) -> dict[str, Any]:
        merged = dict(self.own[session])
        merged.update({f"user:{k}": v for k, v in self.user[self.user_of(session)].items()})
        merged.update({f"app:{k}": v for k, v in self.app.items()})
        return merged

    def commit(self, session: str) -> int:
        self.version[session] += 1
        version = self.version[session]
        self.history[session][version] = dict(self.own[session])
        self.history[session].pop(version - HISTORY_LIMIT, None)
        return version

    def check_expected(self, session: str, expected: int | None) -> None:
        if expected is not None and expected != self.version[session]:
            raise StateConflict("stale")


class StateMachine(RuleBasedStateMachine):
    services: Services

    @initialize()
    def start(self) -> None:
        # A fresh app per run: its sessions, users and app: scope start empty, as the model's do.
        app = f"model-{uuid.uuid4().hex[:10]}"
        address = self.services.server.address
        self.sessions = {
            s: Session(session_id=s, user_id=u, app_name=app, address=address) for u, s in SESSIONS
        }
        self.model = StateModel()

    def teardown(self) -> None:
        for session in getattr(self, "sessions", {}).values():
            session.close()

    def both(self, session: str, real: Any, model: Any) -> Any:
        """Run the service's call and the model's; they must return the same or raise the same class."""
        try:
            expected = model()
        except Exception as error:  # the model's refusal: the service must refuse alike
            with pytest.raises(type(error)):
                real()
            return None
        got = real()
        assert got == expected, f"{session}: service answered {got!r}, the model {expected!r}"
        return got

    def expected_version(self, session: str, choice: str) -> int | None:
        current = self.model.version[session]
        return {"none": None, "current": current, "stale": max(current - 1, 0) if current else 1}[choice]

    sessions_ = st.sampled_from([s for _, s in SESSIONS])
    expectations = st.sampled_from(["none", "none", "current", "stale"])

    @rule(
        session=sessions_,
        data=st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=3),
        choice=expectations,
    )
    def save(self, session: str, data: dict[str, Any], choice: str) -> None:
        expected = self.expected_version(session, choice)

        def model() -> int:
            self.model.check_expected(session, expected)
            self.model.own[session].clear()
            for key, value in data.items():
                target, bare = self.model.target(session, key)
                target[bare] = value
            return self.model.commit(session)

        self.both(session, lambda: self.sessions[session].save_state(data, expected_version=expected), model)

    @rule(session=sessions_, key=st.sampled_from(KEYS), value=VALUES, choice=expectations)
    def set(self, session: str, key: str, value: Any, choice: str) -> None:
        expected = self.expected_version(session, choice)

        def model() -> int:
            self.model.check_expected(session, expected)
            target, bare = self.model.target(session, key)
            target[bare] = value
            return self.model.commit(session)

        self.both(
            session, lambda: self.sessions[session].set_state(key, value, expected_version=expected), model
        )

    @rule(session=sessions_, key=st.sampled_from(KEYS), choice=expectations)
    def delete(self, session: str, key: str, choice: str) -> None:
        expected = self.expected_version(session, choice)
        real = self.sessions[session]

        def model() -> bool:
            self.model.check_expected(session, expected)
            target, bare = self.model.target(session, key)
            existed = bare in target
            target.pop(bare, None)
            self.model.commit(session)
            return existed

        self.both(session, lambda: real.delete_state(key, expected_version=expected), model)

    @rule(
        session=sessions_, key=st.sampled_from(KEYS), delta=st.one_of(st.integers(-3, 3), st.just(MAX_SAFE))
    )
    def increment(self, session: str, key: str, delta: int) -> None:
        def model() -> float:
            target, bare = self.model.target(session, key)
            current = target.get(bare, 0)
            if isinstance(current, bool) or not isinstance(current, (int, float)):
                raise FailedPrecondition("not a number")
            if abs(current + delta) > MAX_SAFE:
                raise InvalidArgument("beyond 2**53")
            target[bare] = current + delta
            self.model.commit(session)
            return current + delta

        self.both(session, lambda: self.sessions[session].increment_state(key, delta), model)

    @rule(session=sessions_, key=st.sampled_from(KEYS), values=st.lists(VALUES, min_size=1, max_size=2))
    def append(self, session: str, key: str, values: list[Any]) -> None:
        def model() -> int:
            target, bare = self.model.target(session, key)
            current = target.get(bare, [])
            if not isinstance(current, list):
                raise FailedPrecondition("not a list")
            target[bare] = [*current, *values]
            self.model.commit(session)
            return len(target[bare])

        self.both(session, lambda: self.sessions[session].append_state(key, *values), model)

    @rule(session=sessions_, user=st.booleans(), app=st.booleans(), choice=expectations)
    def clear(self, session: str, user: bool, app: bool, choice: str) -> None:
        expected = self.expected_version(session, choice)

        def model() -> int:
            self.model.check_expected(session, expected)
            self.model.own[session].clear()
            if user:
                self.model.user[self.model.user_of(session)].clear()
            if app:
                self.model.app.clear()
            return self.model.commit(session)

        real = self.sessions[session]
        self.both(
            session,
            lambda: real.clear_state(
                include_user_scope=user, include_app_scope=app, expected_version=expected
            ),
            model,
        )

    @rule(session=sessions_, back=st.integers(0, 4), choice=expectations)
    def restore_version(self, session: str, back: int, choice: str) -> None:
        version = max(self.model.version[session] - back, 0)
        expected = self.expected_version(session, choice)

        def model() -> int:
            if version not in self.model.history[session]:
                raise NotFound("not kept")
            self.model.check_expected(session, expected)
            self.model.own[session] = dict(self.model.history[session][version])
            return self.model.commit(session)

        real = self.sessions[session]
        self.both(session, lambda: real.restore_state_version(version, expected_version=expected), model)

    @precondition(lambda self: hasattr(self, "model"))
    @invariant()
    def every_session_reads_what_the_model_holds(self) -> None:
        for _, session in SESSIONS:
            real = self.sessions[session]
            assert real.restore_state() == self.model.read(session), session
            assert real.state_version() == self.model.version[session], session

    @rule(session=sessions_)
    def history(self, session: str) -> None:
        versions = self.sessions[session].state_history(limit=5)
        kept = sorted(self.model.history[session].items(), reverse=True)[:5]
        assert [(v.version, v.state) for v in versions] == kept


def test_state_operations_match_the_documented_model(services: Services) -> None:
    StateMachine.services = services
    run_machine(StateMachine, "state", sequences=6, steps=25)
