"""The base of each gRPC service's error interceptor: the one place a handler's exception becomes a
gRPC status, so handlers only raise.

A service's interceptor says how its errors map (`status_of`, which also logs them), which methods
it guards (`intercepts`), and may observe each call (`observed`: the model services' metrics) or
refuse calls before their handler runs (by extending `call`: auth while it starts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc

Behaviour = Callable[[Any, grpc.ServicerContext], Any]


@dataclass(frozen=True)
class Refusal(grpc.Status):
    """A status a call is aborted with (grpc.Status itself is only an interface)."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str], ...] = ()


@dataclass
class CallOutcome:
    """The status code a call ended with, filled in while `observed` is open."""

    code: grpc.StatusCode = grpc.StatusCode.OK


def method_name(method: str) -> str:
    """"Diagnose" of "/drtech.v1.DiagnosisService/Diagnose"."""
    return method.rsplit("/", 1)[-1]


class ErrorInterceptor(grpc.ServerInterceptor):
    """Wraps the unary-unary handlers of the methods it `intercepts` in `call`; streaming handlers
    (health Watch, reflection) pass through untouched."""

    def status_of(self, error: Exception, method: str, request: Any,
                  context: grpc.ServicerContext) -> grpc.Status:
        """The status `error`, raised by `method`'s handler, becomes; logs it as it deserves."""
        raise NotImplementedError

    def intercepts(self, method: str) -> bool:
        """Whether `method` ("/package.Service/Method") is guarded; every method unless overridden."""
        return True

    @contextmanager
    def observed(self, method: str) -> Iterator[CallOutcome]:
        """Open while `method`'s handler runs; the outcome holds its final code when it closes."""
        yield CallOutcome()

    def call(self, behaviour: Behaviour, method: str, request: Any, context: grpc.ServicerContext) -> Any:
        """Run the handler; an exception it raises aborts the call with `status_of(error)`."""
        with self.observed(method) as outcome:
            try:
                return behaviour(request, context)
            except Exception as error:  # the one place every handler error is mapped
                status = self.status_of(error, method, request, context)
            outcome.code = status.code
            context.abort_with_status(status)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or not self.intercepts(method):
            return handler
        behaviour = handler.unary_unary

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            return self.call(behaviour, method, request, context)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
