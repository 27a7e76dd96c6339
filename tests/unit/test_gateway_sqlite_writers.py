"""The gateway's SQLite connections write one at a time (gateway.database.one_writer_at_a_time):
a second writer waits for the first's commit on a lock, not in SQLite's sleeping busy handler;
readers never wait."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from gateway.database import create_database_engine, one_writer_at_a_time

WAITED = 0.3


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'gateway.db'}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE rows (name TEXT)"))
    yield engine
    engine.dispose()


def in_thread(work) -> threading.Thread:  # type: ignore[no-untyped-def]
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def names(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return sorted(connection.execute(text("SELECT name FROM rows")).scalars())


def test_a_second_writer_queues_on_the_lock_not_in_sqlite(tmp_path: Path) -> None:
    """Busy timeout 0: SQLite itself would refuse the second writer at once ("database is locked");
    it waits for the first's commit instead, and then writes."""
    connect = one_writer_at_a_time()
    path = tmp_path / "writers.db"
    first, second = (sqlite3.connect(path, timeout=0, factory=connect, check_same_thread=False)
                     for _ in range(2))
    first.execute("PRAGMA journal_mode=WAL")
    first.execute("CREATE TABLE rows (name TEXT)")
    first.execute("INSERT INTO rows VALUES ('first')")
    failed: list[BaseException] = []

    def write_second() -> None:
        try:
            second.execute("INSERT INTO rows VALUES ('second')")
            second.commit()
        except BaseException as error:  # noqa: BLE001 - reported below
            failed.append(error)

    thread = in_thread(write_second)
    thread.join(WAITED)
    assert thread.is_alive() and not failed, f"the second writer did not wait: {failed}"
    first.commit()
    thread.join(5)
    assert not failed and not thread.is_alive()
    assert sorted(row[0] for row in first.execute("SELECT name FROM rows")) == ["first", "second"]
    first.close()
    second.close()


def test_readers_do_not_wait_for_a_writer(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO rows VALUES ('kept')"))
    writer = engine.connect()
    writer.begin()
    writer.execute(text("INSERT INTO rows VALUES ('pending')"))
    read: list[list[str]] = []
    thread = in_thread(lambda: read.append(names(engine)))
    thread.join(5)
    assert read == [["kept"]]
    writer.rollback()
    writer.close()


def test_a_rolled_back_or_failed_write_lets_the_next_writer_in(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.begin()
        connection.execute(text("INSERT INTO rows VALUES ('undone')"))
        connection.rollback()
    with pytest.raises(Exception), engine.begin() as connection:   # noqa: B017, PT011 - any failure
        connection.execute(text("INSERT INTO no_such_table VALUES (1)"))

    def next_writer() -> None:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO rows VALUES ('next')"))

    thread = in_thread(next_writer)
    thread.join(WAITED)
    assert not thread.is_alive()
    assert names(engine) == ["next"]


def test_a_statement_outside_a_transaction_holds_the_lock_only_while_it_runs(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.exec_driver_sql("CREATE TABLE more (name TEXT)")   # DDL: sqlite3 autocommits it
        connection.rollback()
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO more VALUES ('after')"))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT name FROM more")).scalars().all() == ["after"]
