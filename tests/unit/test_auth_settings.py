"""Auth settings and engine creation: where the database lives and which driver talks to it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.auth.database import make_engine
from services.auth.settings import AuthSettings


def test_the_default_database_is_a_sqlite_file_under_drtech_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("DRTECH_AUTH_DATABASE_URL", raising=False)
    monkeypatch.setenv("DRTECH_HOME", str(tmp_path / "state"))
    assert AuthSettings().database_url == f"sqlite:///{tmp_path}/state/auth.db"


def test_settings_come_from_drtech_auth_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRTECH_AUTH_DATABASE_URL", "postgresql+psycopg://postgres@db:5432/auth")
    monkeypatch.setenv("DRTECH_AUTH_PORT", "6000")
    monkeypatch.setenv("DRTECH_AUTH_SESSION_TTL_HOURS", "0.5")
    settings = AuthSettings()
    assert (settings.database_url, settings.port, settings.session_ttl_hours) == (
        "postgresql+psycopg://postgres@db:5432/auth",
        6000,
        0.5,
    )


def test_the_idle_timeout_is_30_minutes_and_takes_fractions(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AuthSettings().session_idle_minutes == 30
    monkeypatch.setenv("DRTECH_AUTH_SESSION_IDLE_MINUTES", "0.05")   # 3 seconds, for a test
    assert AuthSettings().session_idle_minutes == 0.05


@pytest.mark.parametrize(
    "bad",
    [{"port": 70000}, {"session_ttl_hours": 0}, {"session_idle_minutes": 0}, {"session_idle_minutes": -1},
     {"throttle_max_failures_per_email": 0},
     # every worker thread hashing would leave none for token and health checks
     {"workers": 4, "argon2_max_concurrent": 4}, {"argon2_max_concurrent": 0}],
)
def test_bad_settings_are_refused_at_start(bad: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        AuthSettings(**bad)


def test_the_sqlite_directory_is_created(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'a' / 'b' / 'auth.db'}")
    engine.dispose()
    assert (tmp_path / "a" / "b").is_dir()


def test_a_plain_postgresql_url_uses_psycopg_3() -> None:
    engine = make_engine("postgresql://postgres@127.0.0.1:5432/test")  # connects lazily: no socket here
    assert engine.dialect.driver == "psycopg"
    engine.dispose()


def test_the_argon2_limits_follow_the_worker_threads() -> None:
    """All workers but one may be inside argon2; at most 4 hash at once by default."""
    assert (AuthSettings().argon2_max_concurrent, AuthSettings().argon2_admitted) == (4, 7)
    assert (AuthSettings(workers=4).argon2_max_concurrent, AuthSettings(workers=4).argon2_admitted) == (3, 3)
    assert (AuthSettings(workers=1).argon2_max_concurrent, AuthSettings(workers=1).argon2_admitted) == (1, None)


def test_an_aged_connection_gives_calls_in_flight_the_callers_whole_deadline() -> None:
    """A server closes each connection after its age; the calls in flight on it get a grace at least
    as long as the gateway's deadline for them, whatever the shutdown grace."""
    from gateway.settings import GatewaySettings
    from services.core.settings import ServingSettings

    gateway = GatewaySettings()
    assert AuthSettings(grace_s=0).max_connection_age_grace_s >= gateway.auth_timeout_s
    assert ServingSettings(grace_seconds=0).max_connection_age_grace_seconds >= gateway.diagnose_timeout_s
