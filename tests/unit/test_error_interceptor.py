"""The error-interceptor base of every gRPC service's interceptor (services/common/error_interceptor.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest

from services.common.error_interceptor import CallOutcome, ErrorInterceptor, Refusal

METHOD = "/drtech.v1.Example/Do"


class Aborted(Exception):
    pass


class FakeContext:
    """What grpcio's servicer context does on abort_with_status: keep the status, raise."""

    def __init__(self) -> None:
        self.status: grpc.Status | None = None

    def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise Aborted


class Recording(ErrorInterceptor):
    def __init__(self) -> None:
        self.outcomes: list[grpc.StatusCode] = []

    def intercepts(self, method: str) -> bool:
        return method == METHOD

    def status_of(self, error: Exception, method: str, request: Any,
                  context: grpc.ServicerContext) -> grpc.Status:
        return Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"{method}: {error}", (("reason", "bad"),))

    @contextmanager
    def observed(self, method: str) -> Iterator[CallOutcome]:
        outcome = CallOutcome()
        try:
            yield outcome
        finally:
            self.outcomes.append(outcome.code)


class Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def wrapped(interceptor: ErrorInterceptor, method: str, behaviour: Any) -> grpc.RpcMethodHandler | None:
    handler = grpc.unary_unary_rpc_method_handler(behaviour)
    return interceptor.intercept_service(lambda _details: handler, Details(method))


def refuse(request: Any, context: Any) -> None:
    raise ValueError("no")


def test_a_handler_error_aborts_with_the_mapped_status_and_is_observed_with_its_code() -> None:
    interceptor = Recording()
    handler = wrapped(interceptor, METHOD, refuse)
    context = FakeContext()

    with pytest.raises(Aborted):
        handler.unary_unary("request", context)

    assert context.status == Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"{METHOD}: no", (("reason", "bad"),))
    assert interceptor.outcomes == [grpc.StatusCode.INVALID_ARGUMENT]


def test_a_handler_that_answers_passes_its_reply_through_and_is_observed_as_ok() -> None:
    interceptor = Recording()
    handler = wrapped(interceptor, METHOD, lambda request, context: f"reply to {request}")

    assert handler.unary_unary("request", FakeContext()) == "reply to request"
    assert interceptor.outcomes == [grpc.StatusCode.OK]


def test_methods_it_does_not_intercept_and_streaming_handlers_are_left_untouched() -> None:
    interceptor = Recording()
    other = grpc.unary_unary_rpc_method_handler(lambda request, context: None)
    streaming = grpc.unary_stream_rpc_method_handler(lambda request, context: iter(()))

    health_check = Details("/grpc.health.v1.Health/Check")
    assert interceptor.intercept_service(lambda _details: other, health_check) is other
    assert interceptor.intercept_service(lambda _details: streaming, Details(METHOD)) is streaming
    assert interceptor.intercept_service(lambda _details: None, Details(METHOD)) is None
