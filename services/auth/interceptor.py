"""Maps auth domain errors to gRPC statuses in one place, so handlers only raise (on the error-interceptor
base the model services share, services/common/error_interceptor.py)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from sqlalchemy.exc import OperationalError

from services.auth.errors import (
    ERROR_DOMAIN,
    BadCredentials,
    Busy,
    EmailTaken,
    InvalidToken,
    Throttled,
    UserNotFound,
    WrongPassword,
)
from services.auth.validation import ValidationError
from services.common.error_interceptor import Behaviour, ErrorInterceptor

log = logging.getLogger(__name__)

AUTH_SERVICE_PREFIX = "/drtech.v1.AuthService/"


def error_status(error: Exception) -> status_pb2.Status:
    """The google.rpc.Status a domain error becomes (INTERNAL for anything unexpected), with an
    ErrorInfo naming the account when the error concerns one (for the gateway's audit trail)."""
    status = _bare_status(error)
    account_id = getattr(error, "account_id", None)
    if account_id:
        info = error_details_pb2.ErrorInfo(reason=type(error).__name__, domain=ERROR_DOMAIN,
                                           metadata={"account_id": account_id})
        status.details.add().Pack(info)
    return status


def _bare_status(error: Exception) -> status_pb2.Status:
    if isinstance(error, ValidationError):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
                for field, message in error.violations.items()
            ]
        )
        return _status(code_pb2.INVALID_ARGUMENT, "Some fields are invalid.", bad_request)
    if isinstance(error, EmailTaken):
        return _status(code_pb2.ALREADY_EXISTS, str(error))
    if isinstance(error, WrongPassword):
        # UNAUTHENTICATED like a bad token, told apart by the field violation naming the password.
        field = error_details_pb2.BadRequest.FieldViolation(field=error.field, description=str(error))
        violation = error_details_pb2.BadRequest(field_violations=[field])
        return _status(code_pb2.UNAUTHENTICATED, str(error), violation)
    if isinstance(error, BadCredentials | InvalidToken):
        return _status(code_pb2.UNAUTHENTICATED, str(error))
    if isinstance(error, Throttled):
        delay = Duration()
        delay.FromMilliseconds(int(error.retry_after_s * 1000))
        return _status(
            code_pb2.RESOURCE_EXHAUSTED, str(error), error_details_pb2.RetryInfo(retry_delay=delay)
        )
    if isinstance(error, Busy):
        delay = Duration()
        delay.FromSeconds(1)
        return _status(code_pb2.UNAVAILABLE, str(error), error_details_pb2.RetryInfo(retry_delay=delay))
    if isinstance(error, UserNotFound):
        return _status(code_pb2.NOT_FOUND, str(error))
    if isinstance(error, OperationalError):
        return _status(code_pb2.UNAVAILABLE, "The account database is unavailable; try again shortly.")
    return _status(code_pb2.INTERNAL, "Internal error in the auth service.")


def _status(code: int, message: str, *details: Any) -> status_pb2.Status:
    status = status_pb2.Status(code=code, message=message)
    for detail in details:
        status.details.add().Pack(detail)
    return status


class DomainErrorInterceptor(ErrorInterceptor):
    """Turns AuthService errors into statuses, and refuses its calls with UNAVAILABLE until ``ready``."""

    def __init__(self, ready: threading.Event) -> None:
        self._ready = ready

    def intercepts(self, method: str) -> bool:
        # Only AuthService's own methods; health and reflection keep their own status handling.
        return method.startswith(AUTH_SERVICE_PREFIX)

    def call(self, behaviour: Behaviour, method: str, request: Any, context: grpc.ServicerContext) -> Any:
        if not self._ready.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "The auth service is starting; try again shortly.")
        return super().call(behaviour, method, request, context)

    def status_of(self, error: Exception, method: str, request: Any,
                  context: grpc.ServicerContext) -> grpc.Status:
        # Every error leaves as a status, never a traceback.
        status = error_status(error)
        if isinstance(error, Busy):
            log.warning("%s shed: every argon2 slot stayed busy", method)
        elif status.code in (code_pb2.INTERNAL, code_pb2.UNAVAILABLE):
            log.exception("%s failed", method)
        return rpc_status.to_status(status)
