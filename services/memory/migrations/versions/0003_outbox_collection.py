"""The vector collection (partition) of each outbox entry.

The vector index keeps each user's long-term memories, and each session's short-term ones, in their own
collection (memory.store.vector_collection). A delete's row is gone when the outbox is applied,
so the entry records where its vector lives. NULL: an entry written before this revision (its vector is
in the app's single collection of old, which the service migrates at start-up).

Revision ID: m0003
Revises: m0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "m0003"
down_revision = "m0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sk_memory_outbox", sa.Column("vector_collection", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sk_memory_outbox") as batch:
        batch.drop_column("vector_collection")
