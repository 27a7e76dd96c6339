"""Every error leaves the gateway as JSON `{"detail": "<clear message>"}` with a 4xx/5xx code.

Invalid fields (FastAPI's own request validation and the auth service's BadRequest violations alike)
use one shape, 422:
    {"detail": "Invalid fields: email: Enter a valid email address...",
     "errors": {"email": "Enter a valid email address..."}}
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.storage import StoreUnavailable

log = logging.getLogger("gateway.errors")

_SECTIONS = {"body", "query", "path", "header", "cookie", "form"}


class ApiError(Exception):
    """A client-facing error: status code, message, and optionally per-field messages and headers."""

    def __init__(
        self,
        status_code: int,
        detail: str,
        *,
        errors: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.errors = dict(errors) if errors else None
        self.headers = dict(headers) if headers else None


def invalid_fields(errors: Mapping[str, str]) -> ApiError:
    summary = "; ".join(f"{field}: {message.rstrip('.')}" for field, message in errors.items())
    return ApiError(422, f"Invalid fields: {summary}.", errors=errors)


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The google.rpc.BadRequest field violations carried by a gRPC error, as field -> message."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    violations: dict[str, str] = {}
    if status is None:
        return violations
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            for violation in bad_request.field_violations:
                violations.setdefault(violation.field, violation.description)
    return violations


def error_info(error: grpc.aio.AioRpcError, domain: str) -> dict[str, str]:
    """The metadata of the google.rpc.ErrorInfo of `domain` a gRPC error carries ({} without one)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == domain:
                return dict(info.metadata)
    return {}


def retry_after_s(error: grpc.aio.AioRpcError) -> int | None:
    """The whole seconds to wait (rounded up) that a gRPC error's google.rpc.RetryInfo carries."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return max(1, math.ceil(info.retry_delay.ToMilliseconds() / 1000))
    return None


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(part) for part in loc if str(part) not in _SECTIONS]
    return ".".join(parts) if parts else "body"


def _validation_message(error: Mapping[str, Any]) -> str:
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return "This field is required."
    if kind == "json_invalid":
        return "The request body is not valid JSON."
    if kind in {"model_attributes_type", "dict_type"}:
        return "The request body must be a JSON object."
    if kind == "string_type":
        return "Must be text."
    if kind in {"enum", "literal_error"} and "expected" in ctx:
        return f"Must be one of {ctx['expected']}."
    if "Expected UploadFile" in str(error.get("msg", "")):   # a plain form field where a file belongs
        return "Must be an uploaded file (a multipart part with a file name)."
    message = str(error.get("msg", "Invalid value."))
    return message if message.endswith(".") else message + "."


def validation_errors(exc: RequestValidationError) -> dict[str, str]:
    errors: dict[str, str] = {}
    for error in exc.errors():
        # Invalid JSON is located at a character offset ("body", 33), which is no field.
        field = "body" if error.get("type") == "json_invalid" else _field_name(tuple(error.get("loc", ())))
        errors.setdefault(field, _validation_message(error))
    return errors


def error_response(
    status_code: int,
    detail: str,
    errors: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"detail": detail}
    if errors:
        body["errors"] = dict(errors)
    return JSONResponse(body, status_code=status_code, headers=dict(headers) if headers else None)


class ClientGone(Exception):
    """The client disconnected while its request waited (for an upload slot): nothing was done."""


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status_code, exc.detail, exc.errors, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = invalid_fields(validation_errors(exc))
        return error_response(error.status_code, error.detail, error.errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"Not found: {request.url.path}"
        elif exc.status_code == 405:
            detail = f"Method {request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, detail, headers=exc.headers)

    @app.exception_handler(ClientGone)
    async def _client_gone(request: Request, exc: ClientGone) -> JSONResponse:
        # nginx's "client closed request": nobody reads this answer, the metrics and logs do.
        log.info("client left before %s %s was served", request.method, request.url.path)
        return error_response(499, "The client closed the request before it was served.")

    @app.exception_handler(OperationalError)
    async def _database_unavailable(request: Request, exc: OperationalError) -> JSONResponse:
        # The records database is down, failing over, or (SQLite) locked past its timeout: the
        # client did nothing wrong and can try again; nothing half-done was kept.
        log.error("records database unavailable on %s %s: %s", request.method, request.url.path, exc.orig)
        return error_response(503, "The records database is unavailable right now; try again shortly.",
                              headers={"Retry-After": "5"})

    @app.exception_handler(StoreUnavailable)
    async def _store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        # Reading a stored image or heatmap while the disk or the object store fails (an upload's
        # own path answers this itself: gateway/blob_protocol.py store_unavailable).
        log.error("blob store unavailable on %s %s: %s", request.method, request.url.path, exc)
        return error_response(503, f"The image storage is unavailable right now ({exc}); try again shortly.",
                              headers={"Retry-After": "30"})

    @app.exception_handler(PoolTimeout)
    async def _database_busy(request: Request, exc: PoolTimeout) -> JSONResponse:
        # Every pooled connection (PostgreSQL: db_pool_size + db_max_overflow) stayed in use past
        # db_pool_timeout_s: the gateway is overloaded, which a later try may not find.
        log.error("no records database connection free on %s %s: %s", request.method, request.url.path, exc)
        return error_response(503, "The records database is busy right now; try again shortly.",
                              headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "Internal server error")
