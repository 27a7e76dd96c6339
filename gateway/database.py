"""The gateway's database: engine, sessions, and schema migration (Alembic): at start-up, or apart
(`python -m gateway.migrate`) with serving pods checking the schema is at head."""

from __future__ import annotations

from pathlib import Path

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
        # failing with "database is locked" when uploads arrive together.
        engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})

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
