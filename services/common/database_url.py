"""The SQLAlchemy URL of a configured database, as the auth service and the gateway both connect."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url


def engine_url(configured: str) -> URL:
    """`configured` parsed; a plain postgresql:// URL means psycopg2 to SQLAlchemy, but the project
    installs psycopg 3, so it is given that driver (postgresql+psycopg://)."""
    url = make_url(configured)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url
