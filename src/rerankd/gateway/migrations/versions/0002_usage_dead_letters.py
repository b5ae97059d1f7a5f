"""Usage dead letters: rows the database refused, set aside so they never block the rows after them.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")  # SQLite auto-increments only INTEGER keys


def upgrade() -> None:
    op.create_table(
        "usage_dead_letters",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("reason", sa.String(1024), nullable=False),
        sa.Column("row", sa.Text, nullable=False),
    )
    op.create_index("ix_usage_dead_letters_created_at", "usage_dead_letters", ["created_at"])


def downgrade() -> None:
    op.drop_table("usage_dead_letters")
