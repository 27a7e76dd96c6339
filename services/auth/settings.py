"""Auth service settings (env prefix ``DRTECH_AUTH_``), validated at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.production import database_problem


class AuthSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DRTECH_AUTH_", extra="ignore", populate_by_name=True)

    # State root shared by every process (not prefixed); the default database lives under it.
    home: Path = Field(default=Path("var"), validation_alias="DRTECH_HOME")
    # production refuses development settings (SQLite; services/common/production.py).
    env: Literal["development", "production"] = Field(default="development", validation_alias="DRTECH_ENV")
    # Any SQLAlchemy URL, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/drtech.
    # Empty: a SQLite file at $DRTECH_HOME/auth.db.
    database_url: str = ""
    # At start-up, keep retrying an unreachable database this long (health stays NOT_SERVING meanwhile).
    database_wait_s: float = Field(default=30.0, ge=0)
    # SQLAlchemy's connection pool per auth process (PostgreSQL): at most db_pool_size +
    # db_max_overflow connections (the health check opens one more, briefly). Budget: see
    # deploy/k8s/README.md, "Database connections".
    db_pool_size: int = Field(default=5, ge=1)
    db_max_overflow: int = Field(default=5, ge=0)
    db_pool_timeout_s: float = Field(default=30.0, gt=0)
    # Migrate the schema at start-up (`make run`). Off in production, where a Job runs
    # `python -m services.auth.migrate` with the migrator role first: the service then waits up to
    # migration_wait_s for the schema to reach this release's head, and refuses to start otherwise.
    run_migrations: bool = True
    migration_wait_s: float = Field(default=120.0, ge=0)
    # After start-up, check the database this often; health is NOT_SERVING while it is unreachable.
    database_check_s: float = Field(default=5.0, gt=0)

    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535)
    workers: int = Field(default=8, ge=1, le=256)
    max_message_bytes: int = Field(default=1024 * 1024, ge=4096)
    # Each client connection is closed after this long, so clients look the name up again and
    # spread over pods the autoscaler added (docs/architecture.md). Calls in flight on it get
    # max_connection_age_grace_s to finish: the gateway's deadline for an auth call
    # (DRTECH_GATEWAY_AUTH_TIMEOUT_S, 5 s), so closing one never cuts a call short. It is not the
    # shutdown grace (grace_s): with that at 0 a log-in in flight as its connection aged got 503.
    max_connection_age_s: float = Field(default=30.0, gt=0)
    max_connection_age_grace_s: float = Field(default=5.0, ge=0)
    grace_s: float = Field(default=5.0, ge=0)

    # A session ends this long after log-in (absolute lifetime), or after session_idle_minutes
    # without use (OWASP ASVS 5.0 7.3.1/7.3.2), whichever comes first. Fractions allowed.
    session_ttl_hours: float = Field(default=12.0, gt=0)
    session_idle_minutes: float = Field(default=30.0, gt=0)

    # Log-in throttling: this many failures within the window blocks further tries for the email
    # (or, with the larger limit, for the client IP) until the oldest failure leaves the window.
    throttle_window_minutes: float = Field(default=15.0, gt=0)
    throttle_max_failures_per_email: int = Field(default=5, ge=1)
    throttle_max_failures_per_ip: int = Field(default=20, ge=1)
    # Accounts one client address may create per window (the gateway passes the caller's address).
    throttle_sign_up_window_minutes: float = Field(default=60.0, gt=0)
    throttle_max_sign_ups_per_ip: int = Field(default=20, ge=1)

    # argon2id cost (defaults: argon2-cffi's RFC 9106 low-memory profile). Changing them makes the
    # service rehash each password at its next successful log-in.
    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_kib: int = Field(default=65536, ge=8)
    argon2_parallelism: int = Field(default=4, ge=1)
    # Hashes at once (log-in, sign-up); default min(4, workers - 1). Calls inside argon2 at all
    # (hashing or waiting up to argon2_wait_s for a slot) are at most workers - 1, so token and health
    # checks always find a thread; a call beyond that, or one that waits in vain, gets UNAVAILABLE (503).
    argon2_max_concurrent: int | None = Field(default=None, ge=1)
    argon2_wait_s: float = Field(default=0.5, ge=0)

    @property
    def argon2_admitted(self) -> int | None:
        """Calls that may be inside argon2 at once: all workers but one (none held back with one)."""
        return self.workers - 1 if self.workers > 1 else None

    @model_validator(mode="after")
    def _default_database(self) -> AuthSettings:
        if self.env == "production":
            problem = database_problem(self.database_url, "DRTECH_AUTH_DATABASE_URL")
            if problem:
                raise ValueError(f"DRTECH_ENV=production refuses development settings: {problem}")
        if self.argon2_max_concurrent is None:
            self.argon2_max_concurrent = min(4, max(1, self.workers - 1))
        elif self.workers > 1 and self.argon2_max_concurrent >= self.workers:
            raise ValueError(
                f"argon2_max_concurrent ({self.argon2_max_concurrent}) must be below workers "
                f"({self.workers}): token and health checks need a thread while log-ins hash"
            )
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.home / 'auth.db').as_posix()}"
        return self
