"""The vector collection (partition) of each outbox entry.

The vector index keeps each scope's chunks (a session's, a user's, a collection's) in their own
collection (sessionkit_server.knowledge.store.vector_collection), so a search queries its scopes without a
filter. A delete's rows are gone when the outbox is applied, so the entry records where its vector
lives. NULL: an entry written before this revision (its vector is in the app's single collection of
old, which the service migrates at start-up).

Revision ID: k0003
Revises: k0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "k0003"
down_revision = "k0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sk_knowledge_outbox", sa.Column("vector_collection", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sk_knowledge_outbox") as batch:
        batch.drop_column("vector_collection")
