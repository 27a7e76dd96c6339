"""Alembic environment for the auth tables.

The service runs it programmatically (``services.auth.database.migrate``), handing over an open
connection in ``config.attributes["connection"]``. Without one (the ``alembic`` CLI with
``-x url=...`` or ``sqlalchemy.url`` set), it connects by itself.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from services.auth.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database: pass -x url=<SQLAlchemy URL> or set sqlalchemy.url")
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported for the auth service")
run_migrations_online()
