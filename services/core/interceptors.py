"""The one place domain errors become gRPC status codes (handlers never catch them themselves).

WrongKindOfImage     -> INVALID_ARGUMENT, drtech-error-reason: wrong_image_kind (the model's gate)
InvalidImage         -> INVALID_ARGUMENT, trailing metadata drtech-error-reason: invalid_image
UnsupportedMediaType -> INVALID_ARGUMENT, drtech-error-reason: unsupported_media_type (gateway: 415)
ModelNotReady        -> UNAVAILABLE
ServiceBusy          -> UNAVAILABLE
anything else        -> INTERNAL with a generic message; the traceback is logged with the request id.

It also records each call's outcome in the Prometheus metrics, since it is where the final code is known.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from services.core import metrics
from services.core.errors import (
    ERROR_REASON_KEY,
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
    return grpc.StatusCode.INTERNAL, "internal", "internal error"


def _request_id(request: Any, context: grpc.ServicerContext) -> str:
    request_id = getattr(request, "request_id", "")
    if request_id:
        return str(request_id)
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY:
            return str(value)
    return ""


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    """Wraps every unary-unary handler: maps domain errors, logs the unexpected, counts outcomes."""

    def __init__(self, task: str) -> None:
        self.task = task

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler   # streaming handlers (health Watch, reflection) pass through untouched
        method = handler_call_details.method.rsplit("/", 1)[-1]
        behaviour = handler.unary_unary

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            return self._call(behaviour, method, request, context)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _call(self, behaviour: Callable[[Any, grpc.ServicerContext], Any], method: str, request: Any,
              context: grpc.ServicerContext) -> Any:
        in_flight = metrics.IN_FLIGHT.labels(self.task)
        in_flight.inc()
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            try:
                return behaviour(request, context)
            except Exception as error:  # the one place every handler error is mapped
                code, reason, message = map_error(error)
                request_id = _request_id(request, context)
                if code is grpc.StatusCode.INTERNAL:
                    logger.exception("%s failed unexpectedly (request id %s)", method, request_id or "-")
                    message = f"internal error (request id {request_id})" if request_id else message
                else:
                    logger.info(
                        "%s refused (request id %s): %s %s", method, request_id or "-", code.name, message
                    )
            context.set_trailing_metadata(((ERROR_REASON_KEY, reason),))
            context.abort(code, message)
        finally:
            in_flight.dec()
            metrics.LATENCY.labels(self.task, method).observe(time.perf_counter() - started)
            metrics.REQUESTS.labels(self.task, method, code.name).inc()
