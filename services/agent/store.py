"""The agent store: agent definitions, conversation leases and idempotency records, on SQLite or
PostgreSQL through sessionkit_server.common.db.Database.

Everything that serializes turns lives here, in the database, so it holds across replicas: a lease row
per busy session (taken with one conditional UPDATE or an INSERT .. ON CONFLICT DO NOTHING, never
check-then-insert) and a claim row per idempotency key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Row, and_, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from sessionkit_server.agent import tables as t
from sessionkit_server.common.db import Database
from sessionkit_server.common.idempotency import IdempotencyLedger, KeySpace, KeyTaken, Status
from sessionkit_server.common.migrate import upgrader

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "sk_agent_alembic_version"


@dataclass(frozen=True)
class Conversation:
    """One session: the unit whose turns are serialized and whose agents share a namespace."""

    app_name: str
    user_id: str
    session_id: str

    def where(self, table: Any) -> Any:
        c = table.c
        return and_(c.app_name == self.app_name, c.user_id == self.user_id, c.session_id == self.session_id)

    def values(self) -> dict[str, str]:
        return {"app_name": self.app_name, "user_id": self.user_id, "session_id": self.session_id}


@dataclass
class AgentRow:
    name: str
    definition: bytes
    create_us: int
    update_us: int


@dataclass
class Claim:
    """The state of an idempotency key: ``claimed`` (this call runs it), or the first call's
    ``response``, or neither (the first call is still running)."""

    claimed: bool
    response: bytes | None = None


def _agent(row: Row[Any]) -> AgentRow:
    m = row._mapping
    return AgentRow(m["name"], bytes(m["definition"]), m["create_us"], m["update_us"])


def _insert_ignore(conn: Connection, table: Any) -> Any:
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    return dialect_insert(table).on_conflict_do_nothing()


class AgentStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._keys = IdempotencyLedger(db, t.idempotency)

    async def start(self) -> None:
        await self.db.migrate(upgrader(MIGRATIONS, VERSION_TABLE), VERSION_TABLE)

    # -- agents ---------------------------------------------------------------------------------------

    async def put_agent(
        self, conv: Conversation, name: str, definition: bytes, session_create_us: int, mode: str, now_us: int
    ) -> tuple[AgentRow, bool]:
        """Store an agent. ``mode``: "fail" (return the existing row, created False: the caller
        raises), "replace" or "get". A row left by an earlier session of the same id is replaced."""
        a = t.agents.c

        def run(conn: Connection) -> tuple[AgentRow, bool]:
            key = and_(conv.where(t.agents), a.name == name)
            row = conn.execute(select(t.agents).where(key)).first()
            if row is not None and row._mapping["session_create_us"] != session_create_us:
                conn.execute(delete(t.agents).where(key))
                row = None
            if row is None:
                conn.execute(
                    insert(t.agents).values(
                        **conv.values(),
                        name=name,
                        definition=definition,
                        session_create_us=session_create_us,
                        create_us=now_us,
                        update_us=now_us,
                    )
                )
                return AgentRow(name, definition, now_us, now_us), True
            existing = _agent(row)
            if mode != "replace":
                return existing, False
            conn.execute(update(t.agents).where(key).values(definition=definition, update_us=now_us))
            return AgentRow(name, definition, existing.create_us, now_us), False

        return await self.db.write(run)

    async def get_agent(self, conv: Conversation, name: str, session_create_us: int) -> AgentRow | None:
        a = t.agents.c

        def run(conn: Connection) -> AgentRow | None:
            row = conn.execute(
                select(t.agents).where(
                    conv.where(t.agents), a.name == name, a.session_create_us == session_create_us
                )
            ).first()
            return _agent(row) if row is not None else None

        return await self.db.read(run)

    async def list_agents(
        self, conv: Conversation, session_create_us: int, after: str, limit: int
    ) -> list[AgentRow]:
        a = t.agents.c

        def run(conn: Connection) -> list[AgentRow]:
            query = (
                select(t.agents)
                .where(conv.where(t.agents), a.session_create_us == session_create_us, a.name > after)
                .order_by(a.name)
                .limit(limit)
            )
            return [_agent(row) for row in conn.execute(query)]

        return await self.db.read(run)

    async def delete_agent(self, conv: Conversation, name: str, session_create_us: int) -> bool:
        a = t.agents.c

        def run(conn: Connection) -> bool:
            result = conn.execute(
                delete(t.agents).where(
                    conv.where(t.agents), a.name == name, a.session_create_us == session_create_us
                )
            )
            return bool(result.rowcount)

        return await self.db.write(run)

    # -- conversation leases --------------------------------------------------------------------------

    async def try_lease(self, conv: Conversation, holder: str, now_us: int, ttl_us: int) -> bool:
        """Take the session's conversation for ``holder`` unless another holder's lease is live."""
        return await self.db.write(lambda conn: _lease_in(conn, conv, holder, now_us, ttl_us))

    async def claim_and_lease(
        self, conv: Conversation, key: str, method: str, holder: str, now_us: int, ttl_us: int
    ) -> tuple[Claim, bool]:
        """:meth:`claim` and, when this call now holds the key, :meth:`try_lease`, in one transaction
        (a turn's first durable write): (the claim, whether the lease was taken)."""
        space = _space(conv)

        def run(conn: Connection) -> tuple[Claim, bool]:
            self._keys.lock_in(conn, space, key)
            state = self._keys.state_in(conn, space, key, method, now_us)
            if state.status is not Status.FREE:
                return Claim(False, state.response), False
            self._keys.record_in(conn, space, key, method, None, now_us)
            return Claim(True), _lease_in(conn, conv, holder, now_us, ttl_us)

        try:
            return await self.db.write(run)
        except KeyTaken:
            return Claim(False), False

    async def renew_lease(self, conv: Conversation, holder: str, now_us: int, ttl_us: int) -> bool:
        lease = t.leases.c

        def run(conn: Connection) -> bool:
            result = conn.execute(
                update(t.leases)
                .where(conv.where(t.leases), lease.holder == holder)
                .values(expire_us=now_us + ttl_us)
            )
            return bool(result.rowcount)

        return await self.db.write(run)

    async def release_lease(
        self, conv: Conversation, holder: str, key: str = "", response: bytes | None = None
    ) -> None:
        """Release ``holder``'s lease; with ``key``, in the same transaction (a turn's last durable
        write) complete the key with ``response``, or drop its claim when there is none (the call
        failed: a retry runs it again)."""
        lease = t.leases.c
        space = _space(conv)

        def run(conn: Connection) -> None:
            if key and response is not None:
                self._keys.complete_in(conn, space, key, response)
            elif key:
                self._keys.release_in(conn, space, key)
            conn.execute(delete(t.leases).where(conv.where(t.leases), lease.holder == holder))

        await self.db.write(run)

    # -- idempotency (the shared ledger: sessionkit_server.common.idempotency) -------------------------

    async def claim(self, conv: Conversation, key: str, method: str, now_us: int) -> Claim:
        """Claim ``key`` for a call of ``method``; or the first call's response; or "still running"."""
        state = await self._keys.try_claim(_space(conv), key, method, now_us)
        return Claim(state.status is Status.FREE, state.response)

    async def complete(self, conv: Conversation, key: str, response: bytes) -> None:
        await self._keys.complete(_space(conv), key, response)

    async def abandon(self, conv: Conversation, key: str) -> None:
        """Forget a claim whose call failed: a retry with the key runs the call again."""
        await self._keys.release(_space(conv), key)


def _lease_in(conn: Connection, conv: Conversation, holder: str, now_us: int, ttl_us: int) -> bool:
    lease = t.leases.c
    taken = conn.execute(
        update(t.leases)
        .where(conv.where(t.leases), lease.expire_us < now_us)
        .values(holder=holder, expire_us=now_us + ttl_us)
    ).rowcount
    if taken:
        return True
    inserted = conn.execute(
        _insert_ignore(conn, t.leases).values(**conv.values(), holder=holder, expire_us=now_us + ttl_us)
    ).rowcount
    return bool(inserted)


def _space(conv: Conversation) -> KeySpace:
    """An agent's keys belong to its session."""
    return KeySpace(conv.app_name, conv.user_id, conv.session_id)
