"""The gateway's database: engine, sessions, and schema migration (Alembic): at start-up, or apart
(`python -m gateway.migrate`) with serving pods checking the schema is at head."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import sessionmaker

from services.common.database_url import engine_url
from services.common.migration_transaction import migration_transaction
from services.common.schema import wait_for_schema_at_head

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Our own version table, so the gateway and the auth service can share one PostgreSQL database.
VERSION_TABLE = "gateway_alembic_version"
# PostgreSQL advisory lock key: several gateway replicas starting at once migrate one at a time.
_MIGRATION_LOCK_ID = 0x64725F6777  # "dr_gw"


def create_database_engine(url: str, pool_size: int = 5, max_overflow: int = 5,
                           pool_timeout_s: float = 30.0) -> Engine:
    """An engine for `url`. The pool settings bound this process's PostgreSQL connections to
    pool_size + max_overflow (SQLite, one file, ignores them)."""
    parsed = engine_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # timeout: a writer waits up to 30 s for another's lock (SQLite's busy timeout) instead of
        # failing with "database is locked" when uploads arrive together. factory: this process's
        # writers queue for one lock first (one_writer_at_a_time).
        engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": SQLITE_WAIT_S,
                                                     "factory": one_writer_at_a_time()})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            # WAL: readers never block the writer and the writer never blocks readers.
            cursor.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL syncs at checkpoints, not every commit: a commit costs no fsync and
            # the database stays consistent; a power cut may lose the last commits (SQLite's advice).
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(parsed, pool_pre_ping=True, pool_size=pool_size, max_overflow=max_overflow,
                         pool_timeout=pool_timeout_s)


SQLITE_WAIT_S = 30.0
# Statements that take no write lock: queries, and the connection's settings (a new connection's
# pragmas must not wait for another's write).
_READS = frozenset({"SELECT", "PRAGMA"})


def one_writer_at_a_time() -> type[sqlite3.Connection]:
    """A sqlite3 connection class whose connections write one at a time: a statement other than a
    SELECT or PRAGMA waits for one lock, held until its transaction commits or rolls back (at once
    for a statement outside any transaction).

    SQLite lets one connection write at a time; a second writer gets SQLITE_BUSY and its busy handler
    sleeps, in steps of up to 100 ms, before it looks again. Uploads finishing together (and a thread
    that loses the GIL mid-transaction) turned that into stalls of tens to hundreds of milliseconds:
    a lock wakes the next writer the moment the first is done. Readers never take it (WAL: they do
    not block the writer). Other processes on the same file still meet SQLite's own busy timeout."""
    lock = threading.Lock()

    class OneWriterCursor(sqlite3.Cursor):
        def execute(self, sql: str, parameters: Any = (), /) -> OneWriterCursor:
            connection: OneWriterConnection = self.connection  # type: ignore[assignment]
            connection.before_statement(sql)
            try:
                return super().execute(sql, parameters)
            finally:
                connection.after_statement()

        def executemany(self, sql: str, parameters: Any, /) -> OneWriterCursor:
            connection: OneWriterConnection = self.connection  # type: ignore[assignment]
            connection.before_statement(sql)
            try:
                return super().executemany(sql, parameters)
            finally:
                connection.after_statement()

    class OneWriterConnection(sqlite3.Connection):
        writing = False

        def cursor(self, factory: Any = OneWriterCursor) -> Any:  # type: ignore[override]
            return super().cursor(factory)

        # sqlite3's own shortcuts make a plain cursor: these go through the one above.
        def execute(self, sql: str, parameters: Any = (), /) -> OneWriterCursor:  # type: ignore[override]
            return self.cursor().execute(sql, parameters)

        def executemany(self, sql: str, parameters: Any, /) -> OneWriterCursor:  # type: ignore[override]
            return self.cursor().executemany(sql, parameters)

        def before_statement(self, sql: str) -> None:
            if self.writing or sql.lstrip()[:6].upper() in _READS:
                return
            if not lock.acquire(timeout=SQLITE_WAIT_S):
                raise sqlite3.OperationalError("database is locked (another writer held it too long)")
            self.writing = True

        def after_statement(self) -> None:
            if not self.in_transaction:
                self._release()

        def commit(self) -> None:
            try:
                super().commit()
            finally:
                self.after_statement()

        def rollback(self) -> None:
            try:
                super().rollback()
            finally:
                self.after_statement()

        def close(self) -> None:
            try:
                super().close()
            finally:
                self._release()

        def _release(self) -> None:
            if self.writing:
                self.writing = False
                lock.release()

    return OneWriterConnection


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the latest revision (idempotent)."""
    config = alembic_config()
    with migration_transaction(engine, _MIGRATION_LOCK_ID) as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def wait_for_schema(engine: Engine, wait_s: float) -> None:
    """For a gateway that does not migrate (DRTECH_GATEWAY_RUN_MIGRATIONS=false): return once the
    schema is at this release's head, else raise SchemaNotAtHead after `wait_s`."""
    wait_for_schema_at_head(engine, alembic_config(), VERSION_TABLE, wait_s)


def session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(bind=engine, expire_on_commit=False)
