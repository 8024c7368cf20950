"""Alembic environment: always called from service.storage.schema with an open connection (no alembic.ini)."""

from __future__ import annotations

from alembic import context

from service.storage.models import db
from service.storage.naming import name

config = context.config
connection = config.attributes["connection"]

context.configure(
    connection=connection,
    target_metadata=db.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    transaction_per_migration=True,
    version_table=name("alembic_version"),  # TABLE_PREFIX: beside another app's own alembic_version
)
with context.begin_transaction():
    context.run_migrations()
