"""The one place domain errors become gRPC status codes (handlers never catch them themselves).

WrongKindOfImage     -> INVALID_ARGUMENT, drtech-error-reason: wrong_image_kind (the model's gate)
InvalidImage         -> INVALID_ARGUMENT, trailing metadata drtech-error-reason: invalid_image
UnsupportedMediaType -> INVALID_ARGUMENT, drtech-error-reason: unsupported_media_type (gateway: 415)
ModelNotReady        -> UNAVAILABLE
ServiceBusy          -> UNAVAILABLE
CallCancelled        -> CANCELLED (nobody reads it: the caller has gone)
anything else        -> INTERNAL with a generic message; the traceback is logged with the request id.

It also records each call's outcome in the Prometheus metrics, since it is where the final code is known.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from services.common.error_interceptor import CallOutcome, ErrorInterceptor, Refusal, method_name
from services.core import metrics
from services.core.errors import (
    ERROR_REASON_KEY,
    CallCancelled,
    InvalidImage,
    ModelNotReady,
    ServiceBusy,
    UnsupportedMediaType,
    WrongKindOfImage,
)

REQUEST_ID_KEY = "x-request-id"

logger = logging.getLogger(__name__)


def map_error(error: Exception) -> tuple[grpc.StatusCode, str, str]:
    """(status code, reason, message the caller sees) for an exception a handler raised."""
    if isinstance(error, (UnsupportedMediaType, WrongKindOfImage)):
        return grpc.StatusCode.INVALID_ARGUMENT, error.reason, str(error)   # the message names the refusal
    if isinstance(error, InvalidImage):
        return grpc.StatusCode.INVALID_ARGUMENT, error.reason, f"invalid image: {error}"
    if isinstance(error, ModelNotReady):
        return grpc.StatusCode.UNAVAILABLE, "model_not_ready", str(error) or "the model is not ready yet"
    if isinstance(error, ServiceBusy):
        return grpc.StatusCode.UNAVAILABLE, "busy", str(error)
    if isinstance(error, CallCancelled):
        return grpc.StatusCode.CANCELLED, "cancelled", str(error)
    return grpc.StatusCode.INTERNAL, "internal", "internal error"


def _request_id(request: Any, context: grpc.ServicerContext) -> str:
    request_id = getattr(request, "request_id", "")
    if request_id:
        return str(request_id)
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY:
            return str(value)
    return ""


class ErrorMappingInterceptor(ErrorInterceptor):
    """Maps domain errors (reason in the trailing metadata), logs the unexpected, counts outcomes."""

    def __init__(self, task: str) -> None:
        self.task = task

    def status_of(self, error: Exception, method: str, request: Any,
                  context: grpc.ServicerContext) -> grpc.Status:
        code, reason, message = map_error(error)
        request_id = _request_id(request, context)
        if code is grpc.StatusCode.INTERNAL:
            logger.exception("%s failed unexpectedly (request id %s)", method_name(method), request_id or "-")
            message = f"internal error (request id {request_id})" if request_id else message
        else:
            logger.info("%s refused (request id %s): %s %s",
                        method_name(method), request_id or "-", code.name, message)
        return Refusal(code, message, ((ERROR_REASON_KEY, reason),))

    @contextmanager
    def observed(self, method: str) -> Iterator[CallOutcome]:
        in_flight = metrics.IN_FLIGHT.labels(self.task)
        in_flight.inc()
        started = time.perf_counter()
        outcome = CallOutcome()
        try:
            yield outcome
        finally:
            in_flight.dec()
            metrics.LATENCY.labels(self.task, method_name(method)).observe(time.perf_counter() - started)
            metrics.REQUESTS.labels(self.task, method_name(method), outcome.code.name).inc()
