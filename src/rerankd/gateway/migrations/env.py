"""Alembic environment: runs on the connection :mod:`rerankd.gateway.migrate` hands over.

Why no URL here: the gateway already holds an async engine built from ``--database-url``; migrations run
on one of its connections (inside ``run_sync``), so there is one place that understands database URLs.
"""

from __future__ import annotations

from alembic import context

from rerankd.gateway.db import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table_schema=context.config.attributes.get("version_table_schema"),
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
