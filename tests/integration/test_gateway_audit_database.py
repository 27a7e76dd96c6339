"""The audit trail's table on a real database: SQLite, and PostgreSQL when DRTECH_TEST_POSTGRES_URL is set."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session

from gateway import audit
from gateway.audit import AuditEvent, Entry
from gateway.database import create_database_engine, migrate, session_factory
from gateway.records import utc_now


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_database_engine(database_url)
    migrate(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def event(user_id: str | None, *, days_ago: float = 0, name: audit.Event = "log_in",
          outcome: audit.Outcome = "success") -> Entry:
    return Entry(event=name, outcome=outcome, user_id=user_id, ip="192.0.2.7", user_agent="pytest",
                 at=utc_now() - timedelta(days=days_ago))


def store(engine: Engine, *events: Entry) -> None:
    with session_factory(engine)() as session:
        for item in events:
            session.add(item.row())
        session.commit()


def count(engine: Engine) -> int:
    with session_factory(engine)() as session:
        return session.scalar(select(func.count()).select_from(AuditEvent)) or 0


def test_a_users_events_list_newest_first_paged_and_only_theirs(engine: Engine) -> None:
    store(engine, *(event("alice", days_ago=day) for day in (3, 1, 2)), event("bob"), event(None))
    with session_factory(engine)() as session:
        rows, total = audit.list_for_user(session, "alice", limit=2, offset=0)
        assert total == 3 and len(rows) == 2
        assert rows[0].at > rows[1].at
        rest, _ = audit.list_for_user(session, "alice", limit=2, offset=2)
        assert len(rest) == 1 and rest[0].at < rows[1].at
        assert {row.user_id for row in rows + rest} == {"alice"}


def test_rows_cannot_be_updated(engine: Engine) -> None:
    store(engine, event("alice"))
    with engine.begin() as connection, pytest.raises(DatabaseError, match="append-only"):
        connection.execute(text("UPDATE audit_events SET outcome = 'failure'"))
    with session_factory(engine)() as session:
        assert session.scalars(select(AuditEvent.outcome)).all() == ["success"]


def test_recent_rows_cannot_be_deleted_not_even_by_the_purge_path(engine: Engine) -> None:
    store(engine, event("alice", days_ago=audit.RETENTION_FLOOR_DAYS - 1))
    with engine.begin() as connection, pytest.raises(DatabaseError, match="append-only"):
        connection.execute(text("DELETE FROM audit_events"))
    with Session(engine) as session, pytest.raises(DatabaseError, match="append-only"):
        session.execute(AuditEvent.__table__.delete())
        session.commit()
    assert count(engine) == 1


def test_the_table_cannot_be_truncated_on_postgresql(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no TRUNCATE (its DELETE without WHERE meets the same trigger)")
    store(engine, event("alice"))
    with engine.begin() as connection, pytest.raises(DatabaseError, match="append-only"):
        connection.execute(text("TRUNCATE audit_events"))
    assert count(engine) == 1


def test_retention_purges_only_rows_older_than_the_setting(engine: Engine) -> None:
    store(engine, event("alice", days_ago=400), event("alice", days_ago=100), event(None, days_ago=31),
          event("alice", days_ago=1))
    with session_factory(engine)() as session:
        assert audit.purge_expired(session, 365) == 1
        assert count(engine) == 3
        assert audit.purge_expired(session, 365) == 0
        assert audit.purge_expired(session, audit.RETENTION_FLOOR_DAYS) == 2
        assert count(engine) == 1
        with pytest.raises(ValueError, match="at least 30"):
            audit.purge_expired(session, audit.RETENTION_FLOOR_DAYS - 1)


def test_stored_text_keeps_no_control_characters(engine: Engine) -> None:
    """A user agent is whatever the client sent: NUL (which PostgreSQL text refuses) and newlines
    (which would forge log lines) must not reach the table or the log."""
    hostile = "Mozilla/5.0\x00\r\n{\"event\": \"forged\"}" + "x" * 1000
    cleaned = audit.clean_text(hostile, audit.USER_AGENT_MAX_LENGTH)
    assert len(cleaned) == audit.USER_AGENT_MAX_LENGTH and "\x00" not in cleaned and "\n" not in cleaned
    store(engine, Entry(event="log_in", outcome="failure", user_id=None, ip="::1", user_agent=cleaned))
    with session_factory(engine)() as session:
        assert session.scalars(select(AuditEvent.user_agent)).one() == cleaned
