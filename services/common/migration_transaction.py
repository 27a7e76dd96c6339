"""One transaction around a whole schema migration (Alembic ``upgrade``), DDL included.

Used by the auth service and the gateway at start-up. PostgreSQL runs DDL inside the transaction
and a transaction-scoped advisory lock makes replicas that start together migrate one at a time.
SQLite's Python driver opens transactions only for DML, so each DDL statement took effect on its
own, and a migration interrupted halfway (Ctrl-C during a first start) left tables without their version row,
and every later start failed with "table ... already exists". There the driver is put in autocommit
mode and the transaction is ours: ``BEGIN IMMEDIATE`` (which also queues starters behind each
other) and one COMMIT, or a ROLLBACK that leaves the database as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, text


@contextmanager
def migration_transaction(engine: Engine, lock_id: int) -> Iterator[Connection]:
    """A connection in one transaction that commits when the block ends and rolls back if it raises.
    `lock_id`: the PostgreSQL advisory lock key of the schema being migrated."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT")
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.rollback()
                raise
            connection.commit()
        return
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Held until this transaction ends; PostgreSQL releases it even if the process dies.
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})
        yield connection
