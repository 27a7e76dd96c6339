"""Alembic environment for the gateway's tables. Run through gateway.database.migrate()."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from gateway.database import VERSION_TABLE
from gateway.records import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, version_table=VERSION_TABLE)
        with context.begin_transaction():
            context.run_migrations()
        return
    # `alembic -x url=... upgrade head` from a shell.
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    engine = create_engine(url)
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, version_table=VERSION_TABLE)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run gateway.database.migrate()")
run_migrations_online()
