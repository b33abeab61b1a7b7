"""The one Alembic pattern for idempotency tables (the shape of common.idempotency.idempotency_table).

A service's revision calls :func:`create` for a new table, or :func:`reshape` to move a table of an
older shape to this one: the old table is renamed aside, the new one created under its name, the rows
copied (with their scope), and the old one dropped, in the migration's transaction on SQLite and
PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

from sessionkit_server.common.idempotency import idempotency_columns


def create(name: str) -> None:
    """Create ``name`` in the shared shape (with its index)."""
    op.create_table(name, *idempotency_columns(name))
    op.create_index(f"ix_{name}_time", name, ["create_us"])


def reshape(
    name: str, scope_column: str | None = None, rows: Callable[[str], sa.Select[Any]] | None = None
) -> None:
    """Move the rows of ``name`` (app_name, user_id, key, method, response, create_us; and
    ``scope_column`` when keys belonged to a session) into the shared shape; scope "" otherwise.
    ``rows``: for an old table of another shape, the query (given the old table's name) selecting
    app_name, user_id, key, method, response, create_us and scope, in that order."""
    bind = op.get_bind()
    for index in sa.inspect(bind).get_indexes(name):
        op.drop_index(index["name"] or "", table_name=name)  # index names are per schema: free them first
    old = f"{name}_old"
    op.rename_table(name, old)
    create(name)
    columns = ["app_name", "user_id", "key", "method", "response", "create_us"]
    source = sa.table(old, *[sa.column(c) for c in [*columns, *([scope_column] if scope_column else [])]])
    scope = source.c[scope_column] if scope_column else sa.literal("")
    query = rows(old) if rows else sa.select(*[source.c[c] for c in columns], scope)
    target = sa.table(name, *[sa.column(c) for c in [*columns, "scope"]])
    op.execute(target.insert().from_select([*columns, "scope"], query))
    op.drop_table(old)


def unshape(name: str, scope_column: str | None, response_nullable: bool) -> None:
    """The downgrade of :func:`reshape`: back to the old shape (keys of another scope are dropped
    when there was no ``scope_column``)."""
    op.drop_index(f"ix_{name}_time", table_name=name)
    new = f"{name}_new"
    op.rename_table(name, new)
    key_columns = [
        sa.Column("app_name", sa.String(128), primary_key=True),
        sa.Column("user_id", sa.String(128), primary_key=True),
    ]
    if scope_column:
        key_columns.append(sa.Column(scope_column, sa.String(128), primary_key=True))
    op.create_table(
        name,
        *key_columns,
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=response_nullable),
        sa.Column("create_us", sa.BigInteger, nullable=False),
    )
    columns = ["app_name", "user_id", "key", "method", "response", "create_us"]
    source = sa.table(new, *[sa.column(c) for c in [*columns, "scope"]])
    query = sa.select(*[source.c[c] for c in columns], *([source.c.scope] if scope_column else []))
    if not scope_column:
        query = query.where(source.c.scope == "")
    if not response_nullable:
        query = query.where(source.c.response.is_not(None))
    target = sa.table(name, *[sa.column(c) for c in [*columns, *([scope_column] if scope_column else [])]])
    op.execute(target.insert().from_select([*columns, *([scope_column] if scope_column else [])], query))
    op.drop_table(new)
    if not scope_column:
        op.create_index(f"ix_{name}_time", name, ["create_us"])
