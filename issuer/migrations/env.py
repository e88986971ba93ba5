"""Alembic environment: runs on the connection ``issuer.storage`` hands in."""

from __future__ import annotations

from alembic import context

from issuer.storage import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through issuer.storage.Database.upgrade()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
