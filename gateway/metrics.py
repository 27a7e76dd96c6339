"""Prometheus metrics: HTTP requests by route and status, and diagnoses by exam type and status.

Each app gets its own registry, so several gateways in one test process do not collide.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.stage_cpu import STAGE_CPU_HELP, STAGE_CPU_NAME, StageCPU

HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "drtech_http_requests_total",
            "HTTP requests served",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "drtech_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.diagnoses = Counter(
            "drtech_diagnoses_total",
            "Diagnoses made, by exam type and outcome",
            ["exam_type", "status"],
            registry=self.registry,
        )
        # check_upload (gateway/admission.py), store, record (gateway/blob_protocol.py): the diagnosis
        # path's work in worker threads.
        self.stage_cpu = StageCPU(Counter(STAGE_CPU_NAME, STAGE_CPU_HELP, ["stage"], registry=self.registry))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware (no buffering of bodies); labels requests by the matched route template."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            # The template ("/api/v1/diagnoses/{diagnosis_id}"), never the raw path: bounded label values.
            template = getattr(route, "path", None) or "unmatched"
            # Clients choose the method too: an unknown one is "OTHER", or each would be a new series
            method = scope.get("method", "")
            method = method if method in HTTP_METHODS else "OTHER"
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)
