"""Engine creation and schema migration (Alembic ``upgrade head``, run at start-up)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from urllib.parse import quote

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from services.common.database_url import engine_url
from services.common.migration_transaction import migration_transaction
from services.common.schema import wait_for_schema_at_head

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def make_engine(database_url: str, pool_size: int = 5, max_overflow: int = 5,
                pool_timeout_s: float = 30.0) -> Engine:
    """An engine for ``database_url``; for a SQLite file, its directory is created first. The pool
    settings bound this process's PostgreSQL connections to pool_size + max_overflow."""
    url = engine_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=max_overflow,
                             pool_timeout=pool_timeout_s)

    if url.database and url.database != ":memory:":
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # Writers wait for each other (up to 15 s) instead of failing with "database is locked".
    engine = create_engine(url, connect_args={"timeout": 15})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
        cursor.close()

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config() -> Config:
    """The Alembic configuration for the migrations shipped inside this package (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


# Any fixed number; replicas starting together take turns migrating instead of racing.
_MIGRATION_LOCK_ID = 0x64727465_63680001


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the database schema to ``revision`` (creating the tables in an empty database)."""
    config = alembic_config()
    with migration_transaction(engine, _MIGRATION_LOCK_ID) as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


# Alembic's default version table (the gateway keeps its own, gateway_alembic_version).
VERSION_TABLE = "alembic_version"


def wait_for_schema(engine: Engine, wait_s: float) -> None:
    """For a service that does not migrate (DRTECH_AUTH_RUN_MIGRATIONS=false): return once the
    schema is at this release's head, else raise SchemaNotAtHead after ``wait_s``."""
    wait_for_schema_at_head(engine, alembic_config(), VERSION_TABLE, wait_s)


def ping(engine: Engine) -> None:
    """Raise when the database cannot be reached."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def make_probe_engine(engine: Engine) -> Engine:
    """An engine for health checks of ``engine``'s database: a new connection for every check.

    The service's pooled connections can outlive the database they were opened on (an open SQLite
    file keeps working after its volume goes; pool_pre_ping only runs at checkout), so the check
    opens afresh what a new connection would. A SQLite file is opened read-write without create, so
    a missing file counts as unreachable instead of being replaced by an empty one.
    """
    url = engine.url
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            return engine   # nothing to lose but the process itself
        path = Path(url.database).expanduser().resolve().as_posix()
        probe_url = url.set(database=f"file:{quote(path)}", query={"mode": "rw", "uri": "true"})
        return create_engine(probe_url, poolclass=NullPool, connect_args={"timeout": 1})
    # A short connect timeout, so a database that drops packets fails the check instead of stalling it.
    return create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 3})


def database_reachable(probe: Engine) -> bool:
    """True when ``SELECT 1`` succeeds on the probe engine (see make_probe_engine)."""
    try:
        ping(probe)
    except SQLAlchemyError as error:
        log.debug("database check failed: %s", error)
        return False
    return True


def wait_until_reachable(engine: Engine, wait_s: float, retry_every_s: float = 1.0) -> None:
    """Ping until the database answers; after ``wait_s`` seconds re-raise the last error."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            ping(engine)
            return
        except OperationalError as error:
            if time.monotonic() + retry_every_s > deadline:
                raise
            log.warning("database not reachable yet, retrying: %s", error.orig or error)
            time.sleep(retry_every_s)
