"""API keys gain a default request priority (vLLM's ``priority``: lower is served earlier).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _schema() -> str | None:
    """The schema the tables live in when it is not the default one. ALTER TABLE names the table itself, so
    a connection's ``schema_translate_map`` (how tests isolate themselves on PostgreSQL) does not reach it;
    the version table's schema is the tables' schema (:func:`rerankd.gateway.migrate.upgrade_to_head`)."""
    return op.get_context().version_table_schema


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=_schema()) as batch:  # SQLite alters tables by copying them
        batch.add_column(sa.Column("priority", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=_schema()) as batch:
        batch.drop_column("priority")
