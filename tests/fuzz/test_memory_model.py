"""Model-based test of memory scoping (issue 14, item 3): a hypothesis state machine adds, updates,
deletes, reads and searches short-term (session) and long-term (user) memories through the SDK against
the real memory service over gRPC, and against a plain model of docs/MEMORY.md:

- short-term memories belong to their session, long-term ones to their user; "all" is this session's
  short-term and this user's long-term memories; a caller never sees (reads, updates, deletes, finds)
  another session's short-term or another user's memories: their ids answer NotFound;
- the same text twice in one scope is one memory (the add answers the existing id);
- a deleted memory is never returned again; an update's text is what reads and searches return; an
  update to the text of another memory of the scope is AlreadyExists;
- searching for a memory's exact text finds it (the full-text side of the hybrid search matches it).

The texts are distinct sentences (no near-duplicates, which the service would merge)."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from sessionkit import Session
from sessionkit.errors import AlreadyExists, NotFound
from tests.fuzz.conftest import Services
from tests.fuzz.machines import run_machine

pytestmark = pytest.mark.slow

#: Two sessions of one user and one of another.
SESSIONS = [("u1", "a"), ("u1", "b"), ("u2", "c")]
TEXTS = [
    "The quarterly budget review moved to Thursday afternoon",
    "Maria prefers green tea without sugar",
    "Our staging database runs PostgreSQL sixteen",
    "The dog needs its rabies vaccine in April",
    "Flight LH-438 departs Frankfurt at gate B22",
    "Invoices above ten thousand euros need two signatures",
    "The garden hose leaks near the tomato beds",
    "Kubernetes upgrades happen on the first Monday",
]


class MemoryModel:
    def __init__(self) -> None:
        #: (kind, owner) -> {memory id: text}; kind "short" is owned by a session, "long" by a user.
        self.scopes: dict[tuple[str, str], dict[str, str]] = {}

    def scope(self, session: str, kind: str) -> dict[str, str]:
        owner = session if kind == "short" else next(u for u, s in SESSIONS if s == session)
        return self.scopes.setdefault((kind, owner), {})

    def visible(self, session: str) -> dict[str, str]:
        return {**self.scope(session, "short"), **self.scope(session, "long")}

    def owner_scope(self, memory_id: str) -> dict[str, str] | None:
        return next((scope for scope in self.scopes.values() if memory_id in scope), None)


class MemoryMachine(RuleBasedStateMachine):
    services: Services

    @initialize()
    def start(self) -> None:
        app = f"mem-{uuid.uuid4().hex[:10]}"
        address = self.services.server.address
        self.sessions = {
            s: Session(session_id=s, user_id=u, app_name=app, address=address) for u, s in SESSIONS
        }
        self.model = MemoryModel()
        #: Every id the service ever gave, live or deleted: reads across scopes pick from them.
        self.ids: list[str] = []

    def teardown(self) -> None:
        for session in getattr(self, "sessions", {}).values():
            session.close()

    sessions_ = st.sampled_from([s for _, s in SESSIONS])
    kinds = st.sampled_from(["short", "long"])
    texts = st.sampled_from(TEXTS)

    @rule(session=sessions_, kind=kinds, text=texts)
    def add(self, session: str, kind: str, text: str) -> None:
        scope = self.model.scope(session, kind)
        added = self.sessions[session].add_memory(text, kind)
        assert added is not None and added["text"] == text and added["memory_type"] == kind
        existing = [i for i, t in scope.items() if t == text]
        assert not added.get("merged"), f"{text!r} merged into another memory: the texts are too alike"
        if existing:
            assert added["id"] == existing[0] and added["deduplicated"], "the same text twice is one memory"
        else:
            assert self.model.owner_scope(added["id"]) is None, "a new memory, a new id"
            scope[added["id"]] = text
            self.ids.append(added["id"])

    @rule(session=sessions_, pick=st.integers(0, 50), text=texts)
    def update(self, session: str, pick: int, text: str) -> None:
        if not self.ids:
            return
        memory_id = self.ids[pick % len(self.ids)]
        owner = self.model.owner_scope(memory_id)
        real = self.sessions[session]
        if owner is None or memory_id not in self.model.visible(session):
            with pytest.raises(NotFound):
                real.update_memory(memory_id, text=text)
            return
        if any(t == text and i != memory_id for i, t in owner.items()):
            with pytest.raises(AlreadyExists):
                real.update_memory(memory_id, text=text)
            return
        updated = real.update_memory(memory_id, text=text)
        assert updated["id"] == memory_id and updated["text"] == text
        owner[memory_id] = text

    @rule(session=sessions_, pick=st.integers(0, 50))
    def delete(self, session: str, pick: int) -> None:
        if not self.ids:
            return
        memory_id = self.ids[pick % len(self.ids)]
        visible = self.model.visible(session)
        real = self.sessions[session]
        if memory_id not in visible:
            # Deleted already, or another scope's: either way nothing of it is this caller's to delete.
            with contextlib.suppress(NotFound):
                assert real.delete_memory(memory_id) is False
            return
        assert real.delete_memory(memory_id) is True
        owner = self.model.owner_scope(memory_id)
        assert owner is not None
        del owner[memory_id]

    @rule(session=sessions_, pick=st.integers(0, 50))
    def get(self, session: str, pick: int) -> None:
        if not self.ids:
            return
        memory_id = self.ids[pick % len(self.ids)]
        visible = self.model.visible(session)
        if memory_id not in visible:
            with pytest.raises(NotFound):
                self.sessions[session].get_memory(memory_id)
            return
        assert self.sessions[session].get_memory(memory_id)["text"] == visible[memory_id]

    @rule(session=sessions_, text=texts, kind=st.sampled_from(["all", "short", "long"]))
    def search(self, session: str, text: str, kind: str) -> None:
        hits = self.sessions[session].search_memory(text, kind, limit=20)
        visible = self.model.visible(session) if kind == "all" else self.model.scope(session, kind)
        for hit in hits:
            assert hit["id"] in visible, f"search in {session} returned {hit['text']!r}, not in its scope"
            assert hit["text"] == visible[hit["id"]], "search returned a memory's old text"
        exact = [i for i, t in visible.items() if t == text]
        assert not exact or exact[0] in {hit["id"] for hit in hits}, f"{text!r} not found by its own text"

    @invariant()
    def listings_match(self) -> None:
        if not hasattr(self, "model"):
            return
        for _, session in SESSIONS:
            listed: dict[str, Any] = {m["id"]: m["text"] for m in self.sessions[session].list_memories("all")}
            assert listed == self.model.visible(session), session


def test_memory_scoping_matches_the_documented_model(services: Services) -> None:
    MemoryMachine.services = services
    run_machine(MemoryMachine, "memory", sequences=4, steps=20)
