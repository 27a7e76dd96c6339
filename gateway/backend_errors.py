"""gRPC status codes from the backends -> HTTP errors (docs/architecture.md, "Gateway maps them")."""

from __future__ import annotations

import grpc

from gateway.errors import ApiError
from services.core.errors import ERROR_REASON_KEY, UnsupportedMediaType

_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


def image_refusal_status(reason: str) -> int:
    """The HTTP status of a refused image, from its reason (services/core/errors.py): 415 for a type
    not accepted, 422 for any other (unreadable, out of limits, not what the model reads). The one
    mapping for the gateway's own upload check and the model services' refusals alike."""
    return 415 if reason == UnsupportedMediaType.reason else 422


def refusal_reason(error: grpc.aio.AioRpcError) -> str:
    """The reason a model service's refusal carries in its trailing metadata ("" without one)."""
    for key, value in error.trailing_metadata() or ():
        if key == ERROR_REASON_KEY:
            return str(value)
    return ""


def is_unreachable(error: grpc.aio.AioRpcError) -> bool:
    """The service could not answer (down, not ready, too slow) — as opposed to rejecting the input."""
    return error.code() in _UNREACHABLE


def unavailable(service: str) -> ApiError:
    return ApiError(
        503, f"The {service} service is unavailable; try again shortly.", headers={"Retry-After": "5"}
    )


def to_api_error(error: grpc.aio.AioRpcError, service: str) -> ApiError:
    """A generic mapping; callers handle the codes whose message depends on the call first."""
    code = error.code()
    message = error.details() or code.name.lower()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ApiError(422, message)
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return ApiError(409, message)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return ApiError(401, message, headers={"WWW-Authenticate": "Bearer"})
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return ApiError(403, message)
    if code == grpc.StatusCode.NOT_FOUND:
        return ApiError(404, message)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ApiError(429, message)
    if is_unreachable(error):
        return unavailable(service)
    return ApiError(502, f"The {service} service failed ({code.name}).")
