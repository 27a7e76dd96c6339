"""The auth schema: Alembic migrations bring an empty database to head, and the models match them.

Runs on SQLite and on PostgreSQL (DRTECH_TEST_POSTGRES_URL, a fresh schema per test; skipped when unset).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from services.auth.database import alembic_config, make_engine, migrate
from services.auth.models import Base
from services.auth.testing import fresh_postgres_schema
from tests.support import ROOT, postgres_skip_reason


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'state' / 'auth.db'}")
        yield engine
        engine.dispose()
        return
    reason = postgres_skip_reason()
    if reason:
        pytest.skip(reason)
    with fresh_postgres_schema() as url:
        engine = make_engine(url)
        yield engine
        engine.dispose()


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def test_an_empty_database_is_migrated_to_head(engine: Engine) -> None:
    assert inspect(engine).get_table_names() == []
    migrate(engine)
    assert set(inspect(engine).get_table_names()) == {
        "alembic_version",
        "users",
        "sessions",
        "login_failures",
        "sign_ups",
    }
    assert current_revision(engine) == head_revision()


def test_migrating_again_changes_nothing(engine: Engine) -> None:
    migrate(engine)
    migrate(engine)  # every start-up runs it
    assert current_revision(engine) == head_revision()


def test_a_migration_that_fails_halfway_leaves_the_database_as_it_was(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first start stopped mid-migration (Ctrl-C) must not leave tables without their version row:
    every later start would fail with "table already exists". On SQLite too, whose driver commits
    before each DDL statement unless the transaction is ours."""
    from alembic.operations import Operations

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Operations, "create_index", interrupted)
        with pytest.raises(KeyboardInterrupt):
            migrate(engine)
    assert inspect(engine).get_table_names() == []
    migrate(engine)
    assert current_revision(engine) == head_revision()


def test_the_models_match_the_migrations(engine: Engine) -> None:
    migrate(engine)
    with engine.connect() as connection:
        differences = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata
        )
    assert differences == [], (
        "models and migrations differ; add a migration under services/auth/migrations/versions"
    )


def test_the_migration_downgrades_to_an_empty_database(engine: Engine) -> None:
    migrate(engine)
    migrate_down(engine)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate(engine)
    assert current_revision(engine) == head_revision()


def test_email_uniqueness_is_enforced_by_the_database(engine: Engine) -> None:
    unique_columns = []
    migrate(engine)
    for constraint in inspect(engine).get_unique_constraints("users"):
        unique_columns.append(constraint["column_names"])
    assert ["email"] in unique_columns


def test_emails_stored_before_0003_are_rewritten_in_their_canonical_form(engine: Engine) -> None:
    """Spellings stored before the Unicode rule become the one form sign-up and log-in now use; one
    whose form another account already holds keeps its spelling (a merge is an operator's choice)."""
    import uuid

    from alembic import command
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from services.auth.models import User

    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")
    spellings = {"decomposed": "jose\u0301@example.com", "punycode": "ann@xn--bcher-kva.de",
                 "canonical": "zoe@b\u00fccher.de", "clash": "zoe@xn--bcher-kva.de"}
    with Session(engine) as session, session.begin():
        for name, email in spellings.items():
            session.add(User(id=uuid.uuid5(uuid.NAMESPACE_DNS, name), email=email, password_hash="x",
                             first_name=name, surname="S"))
    migrate(engine)
    with Session(engine) as session:
        stored = {name: email for name, email in session.execute(select(User.first_name, User.email))}
    assert stored == {"decomposed": "jos\u00e9@example.com", "punycode": "ann@b\u00fccher.de",
                      "canonical": "zoe@b\u00fccher.de", "clash": "zoe@xn--bcher-kva.de"}


def migrate_down(engine: Engine) -> None:
    from alembic import command

    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")


REPLICA = """
import sys
from services.auth.database import make_engine, migrate
engine = make_engine(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()  # start together
migrate(engine)
"""


def test_replicas_starting_together_migrate_one_after_the_other(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("several replicas share a database only on PostgreSQL")
    # Separate processes, as replicas are (Alembic's context is per process, not per thread).
    url = engine.url.render_as_string(hide_password=False)
    replicas = [
        subprocess.Popen(
            [sys.executable, "-c", REPLICA, url],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for replica in replicas:
        assert replica.stdout is not None and replica.stdout.readline().strip() == "ready"
    for replica in replicas:
        assert replica.stdin is not None
        replica.stdin.write("go\n")
        replica.stdin.flush()
    failures = []
    for replica in replicas:
        _, stderr = replica.communicate(timeout=120)
        if replica.returncode != 0:
            error_lines = [line for line in stderr.splitlines() if "Error" in line]
            failures.append(error_lines[-1] if error_lines else stderr[-300:])
    assert failures == []
    assert current_revision(engine) == head_revision()


def test_sessions_made_before_0004_count_as_last_used_when_they_were_created(engine: Engine) -> None:
    """The idle timeout needs every session's last use: a session from before it counts as used at
    its start, so one idle past the timeout is over at once instead of living on."""
    import uuid
    from datetime import UTC, datetime, timedelta

    from alembic import command
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from services.auth.models import AuthSession, User

    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0003")
    created = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
    users = sa_table("users", "id", "email", "password_hash", "first_name", "surname", "address1",
                     "address2", "city", "state", "zip", "gender", "created_at")
    sessions = sa_table("sessions", "id", "user_id", "token_hash", "created_at", "expires_at")
    user_id = uuid.uuid4()
    with engine.begin() as connection:  # the 0003 schema has no last_used_at: core inserts, not the model
        connection.execute(users.insert().values(
            id=user_id, email="old@example.com", password_hash="x", first_name="O", surname="S",
            address1="", address2="", city="", state="", zip="", gender="", created_at=created))
        connection.execute(sessions.insert().values(
            id=uuid.uuid4(), user_id=user_id, token_hash="0" * 64, created_at=created,
            expires_at=created + timedelta(hours=12)))
    migrate(engine)
    with Session(engine) as session:
        assert session.scalars(select(AuthSession.last_used_at)).all() == [created]
        assert session.scalar(select(User.email)) == "old@example.com"


def sa_table(name: str, *columns: str):  # type: ignore[no-untyped-def]
    """A bare table for inserts against an older schema (types from the current model's columns)."""
    from sqlalchemy import column, table

    from services.auth.models import Base

    model = Base.metadata.tables[name]
    return table(name, *(column(c, model.c[c].type) for c in columns))
