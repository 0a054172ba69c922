"""Alembic's entry: runs the migrations on the connection `node.migrations.upgrade_schema` hands over,
or on `sqlalchemy.url` from alembic.ini when a developer runs `alembic` by hand."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from node.db import Base

config = context.config
connection = config.attributes.get("connection")
if connection is not None:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite:///var/dfnode.sqlite")
    with engine.begin() as own:
        context.configure(connection=own, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
