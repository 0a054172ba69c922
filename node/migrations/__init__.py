"""Schema changes, run by Alembic on every open of the database, for SQLite and PostgreSQL alike.

`upgrade_schema` brings a database to this release's schema: a new one is created by the migrations,
one made before the node had migrations (tables, no `alembic_version`) is first given the columns
those releases added later and marked as at the baseline revision. On PostgreSQL several nodes may
start at once: an advisory lock makes them migrate one after another.

A new schema change is a new file in `versions/` (`alembic -c node/migrations/alembic.ini revision -m
"what"` writes one), with the models in `node/db.py` changed to match; `tests/test_database.py` checks
that the two agree on both databases.
"""

from __future__ import annotations

import logging
from pathlib import Path

# Alembic narrates at INFO from its import on (its plugins, the dialect); the node logs what it does itself
logging.getLogger("alembic").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from sqlalchemy import Connection, Engine, inspect, text  # noqa: E402

from node.migrations.baseline import BASELINE_REVISION, baseline_metadata  # noqa: E402

FOLDER = Path(__file__).parent
_MIGRATION_LOCK = 0x64666E6F6465  # "dfnode": the advisory lock PostgreSQL's migrations run under


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(FOLDER))
    config.attributes["connection"] = connection
    return config


def upgrade_schema(engine: Engine) -> None:
    """Create or upgrade the node's tables to the newest revision."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        tables = set(inspect(connection).get_table_names())
        if "series" in tables and "alembic_version" not in tables:
            _adopt(connection)
        command.upgrade(alembic_config(connection), "head")


def _adopt(connection: Connection) -> None:
    """A database made before migrations: add the baseline's columns it lacks (each was added nullable)
    and mark it as at the baseline."""
    inspector = inspect(connection)
    for table in baseline_metadata().sorted_tables:
        if not inspector.has_table(table.name):
            table.create(connection)
            continue
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                kind = column.type.compile(dialect=connection.dialect)
                connection.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}")
    command.stamp(alembic_config(connection), BASELINE_REVISION)
