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
import sys
import threading
import time
from dataclasses import dataclass, field, replace

from grpc_health.v1 import health
from pydantic import ValidationError

from protos.drtech.v1 import diagnosis_pb2, diagnosis_pb2_grpc
from services.common.grpc_server import GrpcServer, address, server_options, stop_on_signals, wait_until
from services.common.logs import configure_logging
from services.common.tls import InternalTLSSettings
from services.common.tls import load as load_internal_tls
from services.core import metrics
from services.core.interceptors import ErrorMappingInterceptor
from services.core.runtime import ModelContractError
from services.core.service import DiagnosisServicer, load_model
from services.core.settings import ServingSettings
from services.core.spec import TaskSpec

DIAGNOSIS_SERVICE = diagnosis_pb2.DESCRIPTOR.services_by_name["DiagnosisService"].full_name
# Health is reported for the whole server ("") and for the service by name.
HEALTH_NAMES = ("", DIAGNOSIS_SERVICE)

logger = logging.getLogger(__name__)


@dataclass
class RunningServer:
    """A started model service. `load_model()` makes it SERVING; `stop()` shuts it down gracefully."""

    spec: TaskSpec
    settings: ServingSettings
    grpc_server: GrpcServer
    servicer: DiagnosisServicer
    host: str
    _stopped: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        return self.grpc_server.port

    @property
    def health(self) -> health.HealthServicer:
        return self.grpc_server.health

    @property
    def address(self) -> str:
        return address(self.host, self.port)

    @property
    def target(self) -> str:
        """What a client on this machine dials (a wildcard host is reached via loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(self.host, self.host)
        return address(host, self.port)

    def load_model(self) -> None:
        """Load and warm the model, then report SERVING. Raises ModelContractError if it cannot."""
        self.servicer.set_model(load_model(self.spec, self.settings))
        if self._stopped.is_set():
            self.servicer.close()   # a shutdown began while the model was loading: stay NOT_SERVING
            return
        self.grpc_server.set_serving(HEALTH_NAMES, True)
        metrics.READY.labels(self.spec.task).set(1)

    def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING first, then stop: new calls are refused, calls in flight get `grace` seconds."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.settings.grace_seconds if grace is None else grace
        logger.info("%s: shutting down, letting calls in flight finish (grace %.1fs)", self.spec.task, grace)
        metrics.READY.labels(self.spec.task).set(0)
        self.grpc_server.stop(grace)
        self.servicer.close()
        logger.info("%s: stopped", self.spec.task)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)


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
    metrics.READY.labels(spec.task).set(0)
    grpc_server = GrpcServer(
        spec.task,
        workers=settings.worker_threads,
        options=server_options(settings.max_message_bytes, settings.max_connection_age_seconds,
                               settings.max_connection_age_grace_seconds),
        interceptors=[ErrorMappingInterceptor(spec.task)],
        health_names=HEALTH_NAMES,
        tls=tls,
    )
    grpc_server.add(diagnosis_pb2_grpc.add_DiagnosisServiceServicer_to_server, servicer, DIAGNOSIS_SERVICE)
    grpc_server.start(host, port, health_port=settings.health_port, metrics_port=settings.metrics_port)

    running = RunningServer(spec, settings, grpc_server, servicer, host)
    if load:
        try:
            running.load_model()
        except BaseException:
            running.stop(grace=0)
            raise
    return running


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

    stop_requested = stop_on_signals(log)

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
    wait_until(stop_requested)
    running.stop()
    sys.stdout.flush()
