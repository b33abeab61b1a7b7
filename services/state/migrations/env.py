"""Alembic environment for the state service: runs on the connection common.migrate passes."""

from __future__ import annotations

from alembic import context

from sessionkit_server.state.tables import metadata

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=config.attributes.get("version_table", "sk_state_alembic_version"),
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
