"""The auth gRPC server: AuthService, grpc.health.v1 and reflection, started in-process or by ``__main__``.

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
from concurrent import futures
from datetime import timedelta

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
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
from services.common.tls import InternalTLSSettings, add_port
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

    def __init__(self, health_servicer: health.HealthServicer, probe: Engine, interval_s: float) -> None:
        self._health = health_servicer
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
            status = health_pb2.HealthCheckResponse.SERVING if reachable else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in READINESS_NAMES:
                self._health.set(name, status)


class AuthServer:
    """A running auth server; ``port`` is the bound port (useful when settings asked for port 0)."""

    def __init__(
        self, server: grpc.Server, health_servicer: health.HealthServicer, port: int, engine: Engine
    ) -> None:
        self._server = server
        self._health = health_servicer
        self._engine = engine
        self._database_health: DatabaseHealth | None = None
        self._probe: Engine | None = None
        self.port = port

    def follow_database(self, probe: Engine, interval_s: float) -> None:
        """From now on, keep health in step with the database (see DatabaseHealth)."""
        self._probe = probe
        self._database_health = DatabaseHealth(self._health, probe, interval_s)
        self._database_health.start()

    def stop(self, grace_s: float | None = None) -> None:
        """Report NOT_SERVING, let calls in flight finish (up to ``grace_s``), then release the database."""
        self._health.enter_graceful_shutdown()   # later sets (from the database check) are ignored
        if self._database_health is not None:
            self._database_health.stop()
        self._server.stop(grace_s).wait()
        if self._probe is not None:
            self._probe.dispose()
        self._engine.dispose()

    def wait_for_termination(self, timeout_s: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout_s)


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
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="auth"),
        interceptors=[DomainErrorInterceptor(ready)],
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.grace_s * 1000)),
            # gRPC shares a port on Linux by default: a second auth service (another database) would
            # take half the log-ins. Fail to start instead, as the model services do.
            ("grpc.so_reuseport", 0),
        ],
    )
    health_servicer = health.HealthServicer()
    for name in (*READINESS_NAMES, LIVENESS_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(build_accounts(settings, engine)), server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    port = add_port(server, f"{settings.host}:{settings.port}", tls)   # mTLS with DRTECH_INTERNAL_MTLS
    if port == 0:
        engine.dispose()
        raise OSError(f"could not bind {settings.host}:{settings.port}")
    server.start()
    running = AuthServer(server, health_servicer, port, engine)
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
    for name in (*READINESS_NAMES, LIVENESS_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    running.follow_database(make_probe_engine(engine), settings.database_check_s)
    log.info(
        "serving on %s:%d (database %s)", settings.host, port, engine.url.render_as_string(hide_password=True)
    )
    return running
