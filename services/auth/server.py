"""The auth gRPC server: AuthService, grpc.health.v1 and reflection, started in-process or by ``__main__``,
on the gRPC scaffold the model services share (services/common/grpc_server.py).

Health ("" and ``drtech.v1.AuthService``) is NOT_SERVING until the database is reachable and migrated
to head, then follows the database: a ``SELECT 1`` every ``database_check_s`` on a fresh connection
flips it to NOT_SERVING while the database is unreachable and back to SERVING when it answers again.
The ``liveness`` service name is SERVING once started whatever the database does (a restart would not
bring the database back). ``stop()`` flips everything to NOT_SERVING before the server drains calls in
flight for the grace period.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import Engine

from protos.drtech.v1 import auth_pb2, auth_pb2_grpc
from services.auth.accounts import Accounts, ThrottlePolicy
from services.auth.credentials import Passwords
from services.auth.database import (
    database_reachable,
    make_engine,
    make_probe_engine,
    make_session_factory,
    migrate,
    wait_for_schema,
    wait_until_reachable,
)
from services.auth.interceptor import DomainErrorInterceptor
from services.auth.servicer import AuthServicer
from services.auth.settings import AuthSettings
from services.common.grpc_server import GrpcServer, server_options
from services.common.tls import InternalTLSSettings
from services.common.tls import load as load_internal_tls

log = logging.getLogger(__name__)

SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
# The health names that follow the database (readiness), and the one that does not (liveness probes).
READINESS_NAMES = ("", SERVICE_NAME)
LIVENESS_NAME = "liveness"


class DatabaseHealth:
    """Re-checks the database every ``interval_s`` on its own thread and sets READINESS_NAMES to match.

    Only changes are set, so a health Watch sees one update per transition.
    """

    def __init__(self, grpc_server: GrpcServer, probe: Engine, interval_s: float) -> None:
        self._grpc = grpc_server
        self._probe = probe
        self._interval_s = interval_s
        self._reachable = True   # started only after the database answered and was migrated
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="auth-database-health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            reachable = database_reachable(self._probe)
            if reachable == self._reachable:
                continue
            self._reachable = reachable
            if reachable:
                log.info("database reachable again: health SERVING")
            else:
                log.warning("database unreachable: health NOT_SERVING until it answers again")
            self._grpc.set_serving(READINESS_NAMES, reachable)


class AuthServer:
    """A running auth server; ``port`` is the bound port (useful when settings asked for port 0)."""

    def __init__(self, grpc_server: GrpcServer, engine: Engine) -> None:
        self._grpc = grpc_server
        self._engine = engine
        self._database_health: DatabaseHealth | None = None
        self._probe: Engine | None = None

    @property
    def port(self) -> int:
        return self._grpc.port

    def follow_database(self, probe: Engine, interval_s: float) -> None:
        """From now on, keep health in step with the database (see DatabaseHealth)."""
        self._probe = probe
        self._database_health = DatabaseHealth(self._grpc, probe, interval_s)
        self._database_health.start()

    def stop(self, grace_s: float | None = None) -> None:
        """Report NOT_SERVING, let calls in flight finish (up to ``grace_s``), then release the database."""
        self._grpc.stop_serving()   # before the database check stops: later sets from it are ignored
        if self._database_health is not None:
            self._database_health.stop()
        self._grpc.stop(grace_s)
        if self._probe is not None:
            self._probe.dispose()
        self._engine.dispose()

    def wait_for_termination(self, timeout_s: float | None = None) -> bool:
        return self._grpc.wait_for_termination(timeout_s)


def build_accounts(settings: AuthSettings, engine: Engine) -> Accounts:
    return Accounts(
        session_factory=make_session_factory(engine),
        passwords=Passwords(
            time_cost=settings.argon2_time_cost,
            memory_kib=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            max_concurrent=settings.argon2_max_concurrent,
            max_admitted=settings.argon2_admitted,
            wait_s=settings.argon2_wait_s,
        ),
        session_ttl=timedelta(hours=settings.session_ttl_hours),
        session_idle=timedelta(minutes=settings.session_idle_minutes),
        throttle=ThrottlePolicy(
            window=timedelta(minutes=settings.throttle_window_minutes),
            max_failures_per_email=settings.throttle_max_failures_per_email,
            max_failures_per_ip=settings.throttle_max_failures_per_ip,
            sign_up_window=timedelta(minutes=settings.throttle_sign_up_window_minutes),
            max_sign_ups_per_ip=settings.throttle_max_sign_ups_per_ip,
        ),
    )


def start_server(settings: AuthSettings | None = None,
                 tls_settings: InternalTLSSettings | None = None) -> AuthServer:
    """Bind, serve NOT_SERVING, migrate the database, then report SERVING and return.

    Raises when the port cannot be bound or the database cannot be reached or migrated.
    """
    settings = settings or AuthSettings()
    tls = load_internal_tls("auth", tls_settings)   # before the engine: a bad file leaks nothing
    engine = make_engine(settings.database_url, settings.db_pool_size, settings.db_max_overflow,
                         settings.db_pool_timeout_s)
    ready = threading.Event()  # AuthService calls get UNAVAILABLE until the database is migrated
    grpc_server = GrpcServer(
        "auth",
        workers=settings.workers,
        options=server_options(settings.max_message_bytes, settings.max_connection_age_s,
                               settings.max_connection_age_grace_s),
        interceptors=[DomainErrorInterceptor(ready)],
        health_names=(*READINESS_NAMES, LIVENESS_NAME),
        tls=tls,
    )
    servicer = AuthServicer(build_accounts(settings, engine))
    grpc_server.add(auth_pb2_grpc.add_AuthServiceServicer_to_server, servicer, SERVICE_NAME)
    try:
        port = grpc_server.start(settings.host, settings.port)   # mTLS with DRTECH_INTERNAL_MTLS
    except OSError:
        engine.dispose()
        raise
    running = AuthServer(grpc_server, engine)
    try:
        wait_until_reachable(engine, settings.database_wait_s)
        if settings.run_migrations:
            migrate(engine)
        else:   # the migration Job's work (deploy/k8s): serve only a schema at this release's head
            wait_for_schema(engine, settings.migration_wait_s)
    except Exception:
        running.stop(0)
        raise
    ready.set()
    grpc_server.set_serving((*READINESS_NAMES, LIVENESS_NAME), True)
    running.follow_database(make_probe_engine(engine), settings.database_check_s)
    log.info(
        "serving on %s:%d (database %s)", settings.host, port, engine.url.render_as_string(hide_password=True)
    )
    return running
