"""SQLite under concurrent uploads: writers queue on the lock (busy timeout) instead of failing."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import text

from gateway import records
from gateway.database import create_database_engine, migrate, session_factory
from tests.integration.test_gateway_database import record


def test_sqlite_is_wal_with_a_busy_timeout_and_takes_concurrent_writes(tmp_path: Path) -> None:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'gateway.db'}")
    migrate(engine)
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA synchronous")).scalar() == 1       # NORMAL
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 30_000
    sessions = session_factory(engine)

    def add(index: int) -> str:
        added = record("user", "bone_xray", f"{index:064x}", index)
        with sessions() as session:
            records.add_all(session, [added])
        return added.id

    with ThreadPoolExecutor(max_workers=16) as pool:
        ids = list(pool.map(add, range(64)))
    with sessions() as session:
        assert records.list_owned(session, "user", limit=100, offset=0, exam_type=None)[1] == 64
    assert len(set(ids)) == 64
