"""Helpers for tests that need an auth database: a fresh PostgreSQL schema per use.

The PostgreSQL server comes from ``DRTECH_TEST_POSTGRES_URL`` (e.g.
``postgresql+psycopg://postgres@127.0.0.1:5432/test``); ``postgres_unavailable_reason()`` says why
such tests must skip when it is unset or unreachable.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

POSTGRES_URL_ENV = "DRTECH_TEST_POSTGRES_URL"


def postgres_base_url() -> str:
    return os.environ.get(POSTGRES_URL_ENV, "")


def postgres_unavailable_reason() -> str | None:
    """None when the test PostgreSQL answers; otherwise a sentence saying why it cannot be used."""
    url = postgres_base_url()
    if not url:
        return f"{POSTGRES_URL_ENV} is not set (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)"
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        cause = error.orig or error
        return f"PostgreSQL at {POSTGRES_URL_ENV} is unreachable: {cause.__class__.__name__}: {cause}"
    finally:
        engine.dispose()
    return None


@contextmanager
def fresh_postgres_schema(base_url: str | None = None) -> Iterator[str]:
    """Create an empty schema, yield a URL whose connections use only it, then drop it with its tables.

    Each test run gets its own tables, so reruns and parallel runs on one database do not collide.
    """
    base = make_url(base_url or postgres_base_url())
    schema = f"auth_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        # libpq `options` sets search_path for every connection, so unqualified tables land in the schema.
        yield base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
