"""Migrations apart from serving (deploy/k8s migration Jobs): `python -m gateway.migrate` and
`python -m services.auth.migrate` bring a database to head; with RUN_MIGRATIONS off a serving
process never touches the schema, waits for it to reach head, and refuses to start otherwise.

Runs on SQLite and on PostgreSQL (DRTECH_TEST_POSTGRES_URL; skipped when unset).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect

from gateway.app import create_app
from gateway.database import create_database_engine, wait_for_schema
from gateway.settings import GatewaySettings
from services.auth.server import start_server
from services.auth.settings import AuthSettings
from services.common.schema import SchemaNotAtHead
from tests.support import ROOT


def run_module(module: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DRTECH_")}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env={**environment, **env},
                          capture_output=True, text=True, timeout=120)


def tables(url: str) -> set[str]:
    engine = create_database_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_a_gateway_that_does_not_migrate_refuses_an_unmigrated_database_until_the_job_ran(
    database_url: str, tmp_path: Path
) -> None:
    settings = GatewaySettings(DRTECH_HOME=tmp_path, database_url=database_url, run_migrations=False,
                               migration_wait_s=0)
    with pytest.raises(SchemaNotAtHead, match="no schema yet.*run the migration Job"):
        with TestClient(create_app(settings)):
            pass
    assert "diagnoses" not in tables(database_url), "a serving pod never creates the schema"

    # The Job: the migrator's URL in the variable the serving settings read, nothing else needed.
    done = run_module("gateway.migrate", {"DRTECH_GATEWAY_DATABASE_URL": database_url})
    assert done.returncode == 0, done.stderr
    assert "gateway schema is at head" in done.stderr
    assert "diagnoses" in tables(database_url)

    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        assert client.get("/healthz").status_code == 200


def test_a_waiting_gateway_starts_once_the_migration_finishes(database_url: str) -> None:
    engine = create_database_engine(database_url)
    outcome: list[BaseException | None] = []

    def wait() -> None:
        try:
            wait_for_schema(engine, wait_s=90)
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 - reported below
            outcome.append(error)

    waiter = threading.Thread(target=wait)
    waiter.start()
    try:
        done = run_module("gateway.migrate", {}, "--database-url", database_url)
        assert done.returncode == 0, done.stderr
        waiter.join(timeout=120)
        assert outcome == [None]
    finally:
        engine.dispose()


def test_auth_that_does_not_migrate_refuses_an_unmigrated_database_until_the_job_ran(database_url: str) -> None:
    settings = AuthSettings(database_url=database_url, port=0, run_migrations=False, migration_wait_s=0,
                            database_wait_s=5)
    with pytest.raises(SchemaNotAtHead, match="no schema yet"):
        start_server(settings)
    assert "users" not in tables(database_url)

    done = run_module("services.auth.migrate", {"DRTECH_AUTH_DATABASE_URL": database_url})
    assert done.returncode == 0, done.stderr
    server = start_server(settings)
    server.stop(0)


def test_a_migration_that_cannot_reach_its_database_fails_with_one_line(tmp_path: Path) -> None:
    unreachable = "postgresql+psycopg://migrator@127.0.0.1:1/drtech?connect_timeout=2"
    failed = run_module("gateway.migrate", {}, "--database-url", unreachable)
    assert failed.returncode == 1
    errors = [line for line in failed.stderr.splitlines() if "migration failed" in line]
    assert len(errors) == 1 and "OperationalError" in errors[0], failed.stderr


@pytest.mark.postgres
def test_the_migrator_owns_the_schema_and_the_app_role_serves_with_dml_only(tmp_path: Path) -> None:
    """deploy/k8s/README.md's two roles: the Jobs migrate as the migrator; auth and the gateway
    then serve as a role that can read and write rows but never change the schema."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ProgrammingError

    from services.auth.testing import postgres_base_url, postgres_unavailable_reason
    from PIL import Image

    from tests.unit.test_gateway_http import LIVE_TOKEN, ChestModelThatExplains, OneLiveSession, png_bytes

    reason = postgres_unavailable_reason()
    if reason:
        pytest.skip(reason)
    suffix = uuid.uuid4().hex[:10]
    schema, migrator, app = f"roles_{suffix}", f"migrator_{suffix}", f"app_{suffix}"
    base = make_url(postgres_base_url())
    admin = create_engine(base)

    def url_for(role: str) -> str:
        return base.set(username=role, password=None).update_query_dict(
            {"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)

    with admin.begin() as connection:
        for statement in (
            f"CREATE ROLE {migrator} LOGIN", f"CREATE ROLE {app} LOGIN",
            f"CREATE SCHEMA {schema} AUTHORIZATION {migrator}",
            f"GRANT USAGE ON SCHEMA {schema} TO {app}",
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {migrator} IN SCHEMA {schema} "
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app}",
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {migrator} IN SCHEMA {schema} "
            f"GRANT USAGE, SELECT ON SEQUENCES TO {app}",
        ):
            connection.execute(text(statement))
    try:
        for module in ("services.auth.migrate", "gateway.migrate"):
            done = run_module(module, {}, "--database-url", url_for(migrator))
            assert done.returncode == 0, done.stderr

        settings = GatewaySettings(DRTECH_HOME=tmp_path, database_url=url_for(app), run_migrations=False,
                                   migration_wait_s=0)
        with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
            client.app.state.gateway.backends.auth = OneLiveSession()
            client.app.state.gateway.backends.models["pneumonia"] = ChestModelThatExplains()
            auth = {"Authorization": f"Bearer {LIVE_TOKEN}"}
            made = client.post("/api/v1/diagnoses", files={"file": ("x.png", png_bytes(Image.new("RGB", (32, 32))))},
                               data={"exam_type": "chest_xray"}, headers=auth)
            assert made.status_code == 201, made.text
            assert client.delete(f"/api/v1/diagnoses/{made.json()['id']}", headers=auth).status_code == 204
        server = start_server(AuthSettings(home=tmp_path, database_url=url_for(app), port=0,
                                           run_migrations=False, migration_wait_s=0))
        server.stop(0)

        as_app = create_engine(url_for(app))
        try:
            with pytest.raises(ProgrammingError, match="permission denied"):
                with as_app.begin() as connection:
                    connection.execute(text("CREATE TABLE intruder (id int)"))
            with pytest.raises(ProgrammingError, match="must be owner"):
                with as_app.begin() as connection:
                    connection.execute(text("ALTER TABLE diagnoses ADD COLUMN intruder int"))
        finally:
            as_app.dispose()
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            for role in (app, migrator):
                connection.execute(text(f"DROP OWNED BY {role}"))
                connection.execute(text(f"DROP ROLE {role}"))
        admin.dispose()

