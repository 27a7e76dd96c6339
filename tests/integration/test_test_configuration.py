"""`make test` runs what CI runs: the PostgreSQL tier turns itself on when the local server answers,
and says in one line why it skips when it does not (no variable to remember to set)."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest

from services.auth.testing import POSTGRES_URL_ENV
from tests import support
from tests.support import LOCAL_POSTGRES_URL, ROOT, adopt_local_postgres, free_port, postgres_skip_reason


@pytest.fixture
def variable_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variable unset for the test, and this run's own setting and finding put back after it."""
    monkeypatch.delenv(POSTGRES_URL_ENV, raising=False)
    monkeypatch.setattr(support, "_local_postgres_missing", support._local_postgres_missing)


def local_postgres_answers() -> bool:
    try:
        psycopg.connect(LOCAL_POSTGRES_URL.replace("+psycopg", ""), connect_timeout=5).close()
    except psycopg.OperationalError:
        return False
    return True


def test_with_nothing_listening_the_tier_skips_with_one_line_naming_the_address(variable_unset) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"

    header = adopt_local_postgres(url)

    assert POSTGRES_URL_ENV not in os.environ
    assert header.startswith("PostgreSQL tier: skipped") and url in header and "\n" not in header
    reason = postgres_skip_reason()
    assert reason is not None and url in reason and POSTGRES_URL_ENV in reason and "\n" not in reason


def test_a_variable_already_set_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/other"
    monkeypatch.setenv(POSTGRES_URL_ENV, elsewhere)

    assert "as set" in adopt_local_postgres()
    assert os.environ[POSTGRES_URL_ENV] == elsewhere
    # Set but not answering: the skip still says why, in one line.
    reason = postgres_skip_reason()
    assert reason is not None and "unreachable" in reason and "\n" not in reason


def test_when_the_local_server_answers_the_tier_runs_on_it(variable_unset) -> None:
    if not local_postgres_answers():
        pytest.skip(f"no PostgreSQL answers at {LOCAL_POSTGRES_URL}")

    header = adopt_local_postgres()

    assert os.environ[POSTGRES_URL_ENV] == LOCAL_POSTGRES_URL
    assert header.startswith("PostgreSQL tier: runs on") and postgres_skip_reason() is None


def test_a_plain_pytest_run_says_in_its_header_whether_the_postgresql_tier_runs() -> None:
    env = {k: v for k, v in os.environ.items() if k != POSTGRES_URL_ENV}
    run = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-p", "no:cacheprovider",
                          "tests/unit/test_makefile.py"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    tier = [line for line in run.stdout.splitlines() if line.startswith("PostgreSQL tier: ")]
    expected = "PostgreSQL tier: runs on" if local_postgres_answers() else "PostgreSQL tier: skipped"
    assert len(tier) == 1 and tier[0].startswith(expected), run.stdout
