"""The gRPC server every model service runs: `serve(SPEC)` for `python -m services.<task>`,
`start_server(SPEC, port=0)` for tests.

Lifecycle: listen with health NOT_SERVING -> load the model and warm it up -> SERVING.
On SIGTERM/SIGINT: health NOT_SERVING (so probes and balancers stop sending), then
`server.stop(grace)`, which refuses new calls and lets the ones in flight finish.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server
from pydantic import ValidationError

from protos.drtech.v1 import diagnosis_pb2, diagnosis_pb2_grpc
from services.core import metrics
from services.core.interceptors import ErrorMappingInterceptor
from services.common.logs import configure_logging
from services.core.runtime import ModelContractError
from services.core.service import DiagnosisServicer, load_model
from services.core.settings import ServingSettings
from services.core.spec import TaskSpec
from services.common.tls import InternalTLS, InternalTLSSettings, add_port
from services.common.tls import load as load_internal_tls

DIAGNOSIS_SERVICE = diagnosis_pb2.DESCRIPTOR.services_by_name["DiagnosisService"].full_name
# Health is reported for the whole server ("") and for the service by name.
HEALTH_NAMES = ("", DIAGNOSIS_SERVICE)

logger = logging.getLogger(__name__)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_options(settings: ServingSettings) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_seconds * 1000)),
        # Fail loudly if the port is taken instead of silently sharing it with another process.
        ("grpc.so_reuseport", 0),
    ]


@dataclass
class RunningServer:
    """A started model service. `load_model()` makes it SERVING; `stop()` shuts it down gracefully."""

    spec: TaskSpec
    settings: ServingSettings
    server: grpc.Server
    health: health.HealthServicer
    servicer: DiagnosisServicer
    host: str
    port: int
    _metrics_http: Any = None
    _health_server: grpc.Server | None = None
    _stopped: threading.Event = field(default_factory=threading.Event)

    @property
    def address(self) -> str:
        return _address(self.host, self.port)

    @property
    def target(self) -> str:
        """What a client on this machine dials (a wildcard host is reached via loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(self.host, self.host)
        return _address(host, self.port)

    def load_model(self) -> None:
        """Load and warm the model, then report SERVING. Raises ModelContractError if it cannot."""
        self.servicer.set_model(load_model(self.spec, self.settings))
        if self._stopped.is_set():
            self.servicer.close()   # a shutdown began while the model was loading: stay NOT_SERVING
            return
        for name in HEALTH_NAMES:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        metrics.READY.labels(self.spec.task).set(1)

    def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING first, then stop: new calls are refused, calls in flight get `grace` seconds."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.settings.grace_seconds if grace is None else grace
        logger.info("%s: shutting down, letting calls in flight finish (grace %.1fs)", self.spec.task, grace)
        metrics.READY.labels(self.spec.task).set(0)
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self._health_server is not None:
            self._health_server.stop(0).wait()    # after the drain: probes see NOT_SERVING throughout
        self.servicer.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        logger.info("%s: stopped", self.spec.task)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.server.wait_for_termination(timeout)


def start_server(
    spec: TaskSpec,
    settings: ServingSettings | None = None,
    *,
    port: int | None = None,
    host: str | None = None,
    load: bool = True,
    tls_settings: InternalTLSSettings | None = None,
) -> RunningServer:
    """Start the task's gRPC server (port 0 = a free port). With `load`, return only once SERVING.

    With load=False the server listens but reports NOT_SERVING and answers UNAVAILABLE until
    `RunningServer.load_model()` is called; `serve` uses that so probes see it come up.
    With DRTECH_INTERNAL_MTLS on (`tls_settings`, default from the environment) every port it
    serves gRPC on, the health port included, takes only mutual-TLS callers (services/common/tls.py).
    """
    settings = settings or ServingSettings()
    try:
        tls = load_internal_tls(spec.task, tls_settings)
    except ValueError as error:
        raise OSError(str(error)) from None
    if settings.model_dir is not None:
        spec = replace(spec, model_dir=settings.model_dir)
    host = host if host is not None else settings.host
    port = port if port is not None else (settings.port if settings.port is not None else spec.default_port)

    servicer = DiagnosisServicer(spec, settings)
    health_servicer = health.HealthServicer()
    for name in HEALTH_NAMES:
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    metrics.READY.labels(spec.task).set(0)

    server = grpc.server(
        ThreadPoolExecutor(max_workers=settings.worker_threads, thread_name_prefix=f"{spec.task}-grpc"),
        interceptors=[ErrorMappingInterceptor(spec.task)],
        options=server_options(settings),
    )
    diagnosis_pb2_grpc.add_DiagnosisServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (DIAGNOSIS_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    bound = _bind(server, _address(host, port), "listen on", tls)
    server.start()

    health_server = None
    if settings.health_port:
        try:
            health_server = _start_health_server(spec, health_servicer, _address(host, settings.health_port),
                                                 tls)
        except OSError:
            server.stop(0)
            raise

    metrics_http = None
    if settings.metrics_port:
        try:
            metrics_http, _ = start_http_server(settings.metrics_port, addr=host)
        except OSError as error:
            server.stop(0)
            if health_server is not None:
                health_server.stop(0)
            address = _address(host, settings.metrics_port)
            raise OSError(f"cannot serve metrics on {address}: {error}") from None

    running = RunningServer(spec, settings, server, health_servicer, servicer, host, bound, metrics_http,
                            health_server)
    if load:
        try:
            running.load_model()
        except BaseException:
            running.stop(grace=0)
            raise
    return running


def _start_health_server(spec: TaskSpec, health_servicer: health.HealthServicer, address: str,
                         tls: InternalTLS | None) -> grpc.Server:
    """A gRPC server on `address` with only the Health service (the same servicer, so the same
    statuses) and two threads of its own, which Diagnose calls never hold."""
    server = grpc.server(ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"{spec.task}-health"),
                         options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    _bind(server, address, "serve health on", tls)
    server.start()
    return server


def _bind(server: grpc.Server, address: str, purpose: str, tls: InternalTLS | None) -> int:
    """The port bound; OSError naming `purpose` and the address when it cannot be (grpcio raises or
    returns 0, depending on the version)."""
    try:
        bound = add_port(server, address, tls)
    except RuntimeError as error:
        raise OSError(f"cannot {purpose} {address}: {error} (is the port in use?)") from None
    if not bound:
        raise OSError(f"cannot {purpose} {address} (is the port in use?)")
    return bound


def _parse_args(spec: TaskSpec, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m services.{spec.task}",
        description=f"Dr.Tech {spec.task} model service (gRPC drtech.v1.DiagnosisService).",
    )
    parser.add_argument("--host", help="address to listen on (default DRTECH_SERVING_HOST or 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int,
        help=f"port to listen on; 0 picks a free one (default DRTECH_SERVING_PORT or {spec.default_port})",
    )
    return parser.parse_args(argv)


class _LoadInBackground:
    """`running.load_model()` in a daemon thread; `done` is set when it returns or raises (`error`)."""

    def __init__(self, running: RunningServer) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._running = running
        threading.Thread(target=self._load, name=f"{running.spec.task}-load", daemon=True).start()

    def _load(self) -> None:
        try:
            self._running.load_model()
        except BaseException as error:  # handed to the main thread, which decides
            self.error = error
        finally:
            self.done.set()


def serve(spec: TaskSpec, argv: list[str] | None = None) -> None:
    """Run the task's model service until SIGTERM or SIGINT. Exits non-zero if it cannot start."""
    started = time.perf_counter()
    args = _parse_args(spec, argv)
    log = configure_logging(spec.task)
    try:
        settings = ServingSettings()
    except ValidationError as error:
        log.error("invalid DRTECH_SERVING_* settings:\n%s", error)
        raise SystemExit(2) from None

    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    try:
        running = start_server(spec, settings, port=args.port, host=args.host, load=False)
    except OSError as error:
        log.error("%s", error)
        raise SystemExit(1) from None
    log.info("listening on %s (NOT_SERVING until the model is warm)", running.address)
    # The model loads and warms up in a thread so that a SIGTERM during a long warm-up (a GPU
    # provider compiling its kernels, say) stops the process within the pod's grace period.
    loading = _LoadInBackground(running)
    while not loading.done.wait(timeout=0.2):
        if stop_requested.is_set():
            log.info("stopping while the model is still loading")
            running.stop(grace=0)
            # The loading thread is inside the runtime and cannot be interrupted; nothing it holds
            # needs saving, so leave without waiting for it.
            logging.shutdown()
            sys.stdout.flush()
            os._exit(0)
    if isinstance(loading.error, ModelContractError):
        log.error("cannot serve the %s model: %s", spec.task, loading.error)
        running.stop(grace=0)
        raise SystemExit(1) from None
    if loading.error is not None:
        running.stop(grace=0)
        raise loading.error
    if not stop_requested.is_set():
        log.info("SERVING %s after %.2fs", spec.task, time.perf_counter() - started)
        print(f"listening on {running.address}", flush=True)
    # A timed wait keeps the main thread responsive to signals on every platform.
    while not stop_requested.wait(timeout=1.0):
        pass
    running.stop()
    sys.stdout.flush()
