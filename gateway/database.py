"""The gateway's database: engine, sessions, and schema migration (Alembic) at start-up."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import sessionmaker

from services.core.database_url import engine_url
from services.core.migration_transaction import migration_transaction

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Our own version table, so the gateway and the auth service can share one PostgreSQL database.
VERSION_TABLE = "gateway_alembic_version"
# PostgreSQL advisory lock key: several gateway replicas starting at once migrate one at a time.
_MIGRATION_LOCK_ID = 0x64725F6777  # "dr_gw"


def create_database_engine(url: str) -> Engine:
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
    return create_engine(parsed, pool_pre_ping=True)


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


def session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(bind=engine, expire_on_commit=False)
