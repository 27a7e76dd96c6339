"""Fixtures shared by every test tier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.auth.testing import fresh_postgres_schema
from tests.support import adopt_local_postgres, data_dir, postgres_skip_reason

_POSTGRES_TIER = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """`make test` runs what CI runs: the PostgreSQL tier runs whenever the local server answers, for
    this run and the processes it starts, without anyone setting the variable."""
    config.stash[_POSTGRES_TIER] = adopt_local_postgres()


def pytest_report_header(config: pytest.Config) -> str:
    return config.stash.get(_POSTGRES_TIER, "")


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or a skip saying why (a fresh clone has no ../shared)."""
    path = data_dir()
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set DRTECH_DATA_DIR)")
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each database test runs on a fresh SQLite file and on a fresh PostgreSQL schema
    (skipped, with the reason, when no PostgreSQL answers)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    reason = postgres_skip_reason()
    if reason:
        pytest.skip(reason)
    with fresh_postgres_schema() as url:
        yield url
