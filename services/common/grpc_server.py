"""The gRPC server scaffold every Dr.Tech gRPC service runs on: the model services and auth.

A `GrpcServer` serves the service's own servicer, grpc.health.v1 and reflection, on ports that take
only mutual-TLS callers when DRTECH_INTERNAL_MTLS is on (tls.py). Health starts NOT_SERVING for
every name; the service says when it is SERVING. `stop(grace)` flips every name to NOT_SERVING
first (so probes and balancers stop sending), then `server.stop(grace)` refuses new calls and lets
the ones in flight finish. Optionally a second port serves health alone, and one Prometheus metrics.

`stop_on_signals` and `wait_until` are the `python -m` side: SIGTERM or SIGINT asks for that
graceful stop instead of ending the process.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from services.common.tls import InternalTLS, add_port


def address(host: str, port: int) -> str:
    """`host:port`, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_options(max_message_bytes: int, max_connection_age_s: float,
                   max_connection_age_grace_s: float) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Each client connection is closed after this long, so clients look the name up again and
        # spread over the pods an autoscaler added.
        ("grpc.max_connection_age_ms", int(max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(max_connection_age_grace_s * 1000)),
        # gRPC shares a port on Linux by default: fail loudly if the port is taken instead of
        # silently splitting the calls with another process.
        ("grpc.so_reuseport", 0),
    ]


class GrpcServer:
    """One service's gRPC server: add its servicer (`add`), `start` it, report health, `stop` it."""

    def __init__(self, name: str, *, workers: int, options: Sequence[tuple[str, Any]],
                 interceptors: Sequence[grpc.ServerInterceptor], health_names: Iterable[str],
                 tls: InternalTLS | None) -> None:
        self.name = name
        self.health = health.HealthServicer()
        for health_name in health_names:
            self.health.set(health_name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server = grpc.server(ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{name}-grpc"),
                                  interceptors=list(interceptors), options=list(options))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = 0
        self._tls = tls
        self._reflected = [health.SERVICE_NAME, reflection.SERVICE_NAME]
        self._health_server: grpc.Server | None = None
        self._metrics_http: Any = None

    def add(self, add_to_server: Callable[[Any, grpc.Server], None], servicer: Any,
            service_name: str) -> None:
        """Serve `servicer` (`add_to_server`: the generated add_..._to_server), listed by reflection."""
        add_to_server(servicer, self.server)
        self._reflected.insert(0, service_name)

    def start(self, host: str, port: int, *, health_port: int | None = None,
              metrics_port: int | None = None) -> int:
        """Listen on `host:port` (0: a free port) and return the bound port; with `health_port`,
        serve health alone there too, with `metrics_port` the Prometheus metrics. OSError, with
        nothing left listening, when a port cannot be had."""
        reflection.enable_server_reflection(tuple(self._reflected), self.server)
        self.port = _bind(self.server, address(host, port), "listen on", self._tls)
        self.server.start()
        try:
            if health_port:
                self._health_server = self._start_health_server(address(host, health_port))
            if metrics_port:
                try:
                    self._metrics_http, _ = start_http_server(metrics_port, addr=host)
                except OSError as error:
                    raise OSError(f"cannot serve metrics on {address(host, metrics_port)}: {error}") from None
        except OSError:
            self.server.stop(0)
            if self._health_server is not None:
                self._health_server.stop(0)
            raise
        return self.port

    def set_serving(self, names: Iterable[str], serving: bool) -> None:
        """Report `names` SERVING or NOT_SERVING (ignored once `stop_serving` was called)."""
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for health_name in names:
            self.health.set(health_name, status)

    def stop_serving(self) -> None:
        """Every health name NOT_SERVING from now on (later `set_serving` calls are ignored)."""
        self.health.enter_graceful_shutdown()

    def stop(self, grace_s: float | None) -> None:
        """NOT_SERVING, then stop: new calls are refused, calls in flight get `grace_s` seconds."""
        self.stop_serving()
        self.server.stop(grace_s).wait()
        if self._health_server is not None:
            self._health_server.stop(0).wait()    # after the drain: probes see NOT_SERVING throughout
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()

    def wait_for_termination(self, timeout_s: float | None = None) -> bool:
        return self.server.wait_for_termination(timeout_s)

    def _start_health_server(self, health_address: str) -> grpc.Server:
        """A gRPC server with only the Health service (the same servicer, so the same statuses) and
        two threads of its own, which the service's calls never hold."""
        server = grpc.server(ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"{self.name}-health"),
                             options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        _bind(server, health_address, "serve health on", self._tls)
        server.start()
        return server


def _bind(server: grpc.Server, bind_address: str, purpose: str, tls: InternalTLS | None) -> int:
    """The port bound; OSError naming `purpose` and the address when it cannot be (grpcio raises or
    returns 0, depending on the version)."""
    try:
        bound = add_port(server, bind_address, tls)
    except RuntimeError as error:
        raise OSError(f"cannot {purpose} {bind_address}: {error} (is the port in use?)") from None
    if not bound:
        raise OSError(f"cannot {purpose} {bind_address} (is the port in use?)")
    return bound


def stop_on_signals(log: logging.Logger) -> threading.Event:
    """An Event that SIGTERM and SIGINT set (and log) instead of ending the process."""
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop_requested.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_stop)
    return stop_requested


def wait_until(event: threading.Event) -> None:
    # A timed wait keeps the main thread responsive to signals on every platform.
    while not event.wait(timeout=1.0):
        pass
