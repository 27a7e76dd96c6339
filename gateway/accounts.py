"""Accounts: sign-up, log-in, log-out (this session or all), password change, me; and the dependency
that authenticates every other call.

A caller is authenticated by `Authorization: Bearer <token>` (API clients) or by the HttpOnly
session cookie (web UI). Cookie-authenticated requests that change state must also send the header
`X-Requested-With` (any value): a cross-site form cannot set custom headers and a cross-site
fetch() that does needs a CORS preflight this gateway never grants, so this stops CSRF.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

import grpc
from fastapi import APIRouter, Depends, Request, Response
from pydantic import AfterValidator, BaseModel
from pydantic_core import PydanticCustomError
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import audit
from gateway.backend_errors import is_unreachable, to_api_error, unavailable
from gateway.context import ContextDep, GatewayContext, client_ip, get_context
from gateway.errors import (
    ApiError,
    error_info,
    error_response,
    field_violations,
    invalid_fields,
    retry_after_s,
)
from gateway.serialization import iso_utc, user_json
from gateway.session_cache import verified_user
from protos.drtech.v1 import auth_pb2
from services.auth.errors import ERROR_DOMAIN as AUTH_ERROR_DOMAIN
from services.auth.validation import (
    EMAIL_MAX_LENGTH,
    PASSWORD_MAX_LENGTH,
    ValidationError,
    validate_new_password,
    validate_sign_up,
)

router = APIRouter(prefix="/api/v1")

CSRF_HEADER = "X-Requested-With"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
BAD_CREDENTIALS = "Incorrect email or password."
NOT_AUTHENTICATED = "Not authenticated: send 'Authorization: Bearer <access_token>' or log in."
BAD_TOKEN = "Your session is invalid, expired or logged out; log in again."


def _encodable(value: str) -> str:
    # JSON may escape a lone UTF-16 surrogate ("\ud800"), which no protobuf or UTF-8 database holds.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError(
            "string_unicode", "Must be valid text (it holds an unpaired surrogate)."
        ) from None
    return value


Text = Annotated[str, AfterValidator(_encodable)]


class SignUpDraft(BaseModel):
    """A sign-up form as it is being filled in: every field may still be missing."""

    email: Text | None = None
    password: Text | None = None
    first_name: Text | None = None
    surname: Text | None = None
    address1: Text | None = None
    address2: Text | None = None
    city: Text | None = None
    state: Text | None = None
    zip: Text | None = None
    gender: Text | None = None
    birth_date: Text | None = None


class SignUpBody(SignUpDraft):
    """A submitted sign-up form: email, password and both names are required."""

    email: Text
    password: Text
    first_name: Text
    surname: Text


class LogInBody(BaseModel):
    email: Text
    password: Text


class ChangePasswordBody(BaseModel):
    current_password: Text
    new_password: Text


@dataclass(frozen=True)
class Caller:
    user: auth_pb2.User
    token: str
    via_cookie: bool


def token_from_request(request: Request, cookie_name: str) -> tuple[str, bool] | None:
    """(token, came_from_cookie), preferring the Authorization header; None when neither is sent."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), False
    cookie = request.cookies.get(cookie_name)
    if cookie:
        return cookie, True
    return None


def lacks_csrf_header(request: Request, via_cookie: bool) -> bool:
    return via_cookie and request.method not in SAFE_METHODS and not request.headers.get(CSRF_HEADER)


def csrf_refusal() -> ApiError:
    return ApiError(
        403, f"Cookie-authenticated requests that change data must send the {CSRF_HEADER} header."
    )


async def authenticate_token(ctx: GatewayContext, token: str) -> auth_pb2.User:
    """The token's user: from the sessions verified a moment ago, or the auth service. 401 for a
    dead session."""
    try:
        return await verified_user(ctx.backends.auth, ctx.verified_sessions, token,
                                   ctx.settings.auth_timeout_s)
    except grpc.aio.AioRpcError as error:
        if error.code() in {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT}:
            raise ApiError(401, BAD_TOKEN, headers={"WWW-Authenticate": "Bearer"}) from None
        raise to_api_error(error, "authentication") from None


async def current_caller(request: Request, ctx: ContextDep) -> Caller:
    known = getattr(request.state, "caller", None)
    if known is not None:       # authenticated before the body was read (AuthenticateUploadsFirst)
        return known
    found = token_from_request(request, ctx.settings.cookie_name)
    if found is None:
        raise ApiError(401, NOT_AUTHENTICATED, headers={"WWW-Authenticate": "Bearer"})
    token, via_cookie = found
    # The session is checked first: a missing, expired or revoked one is 401 (API.md), whatever
    # else the request lacks; only a live session can be abused by a cross-site request.
    user = await authenticate_token(ctx, token)
    if lacks_csrf_header(request, via_cookie):
        raise csrf_refusal()
    return Caller(user=user, token=token, via_cookie=via_cookie)


CallerDep = Annotated[Caller, Depends(current_caller)]

# POST routes that take an upload: FastAPI reads a form before it resolves dependencies.
UPLOAD_PATHS = frozenset({"/api/v1/diagnoses", "/api/v1/previews"})


def declared_body_bytes(scope: Scope, max_bytes: int) -> int:
    """The body size a request declares (Content-Length), or `max_bytes` for one sent without it
    (chunked), which BodySizeLimit stops at that many bytes."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return min(max(int(value), 0), max_bytes)
            except ValueError:
                return max_bytes
    return max_bytes


class AuthenticateUploadsFirst:
    """ASGI middleware: an upload's caller is authenticated before its body is read, so a client
    without a valid session gets its 401 (or 403) at once, without the gateway receiving and spooling
    up to the upload limit first. The endpoint's CallerDep then finds the caller in request.state.
    Then the upload is admitted to the upload queue (gateway/upload_queue.py) for its declared size;
    when the queue is full, 503 with Retry-After, before its body is read too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in UPLOAD_PATHS:
            await self.app(scope, receive, send)
            return
        request = Request(scope)        # no receive: the body stays unread
        ctx = get_context(request)
        size = declared_body_bytes(scope, ctx.settings.max_request_bytes)
        try:
            caller = await current_caller(request, ctx)
        except ApiError as error:
            await error_response(error.status_code, error.detail, error.errors, error.headers)(scope, receive, send)
            return
        if not ctx.upload_queue.try_admit(size):
            await error_response(503, "The gateway is receiving too many uploads (its upload queue is full); "
                                      "try again shortly.", headers={"Retry-After": "5"})(scope, receive, send)
            return
        scope.setdefault("state", {})["caller"] = caller
        try:
            await self.app(scope, receive, send)
        finally:
            ctx.upload_queue.release(size)


def raise_if_throttled(error: grpc.aio.AioRpcError) -> None:
    """429 with Retry-After for the auth service's throttles (log-in failures, sign-ups per address),
    which say when to retry; any other RESOURCE_EXHAUSTED is no throttling."""
    retry_after = retry_after_s(error)
    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after is not None:
        raise ApiError(429, error.details() or "Too many attempts; try again later.",
                       headers={"Retry-After": str(retry_after)}) from None


@router.post("/auth/signup", status_code=201)
async def sign_up(body: SignUpBody, request: Request, ctx: ContextDep) -> dict:
    # A refused sign-up (invalid, taken, throttled) concerns no account: recorded for operators only.
    async with audit.refusals_recorded(ctx, request, "sign_up", None):
        user = await _sign_up(body, request, ctx)
    await audit.record(ctx, audit.entry(request, "sign_up", "success", user.id), required=False)
    return {"id": user.id, "email": user.email, "first_name": user.first_name, "surname": user.surname}


async def _sign_up(body: SignUpBody, request: Request, ctx: GatewayContext) -> auth_pb2.User:
    fields = body.model_dump()
    try:
        # The auth service applies the same rules; checking here gives every message in one reply
        # without a round trip, and the auth service stays the authority.
        validate_sign_up(fields)
    except ValidationError as error:
        raise invalid_fields(error.violations) from None
    signup = auth_pb2.SignUpRequest(**{name: value or "" for name, value in fields.items()},
                                    client_ip=client_ip(request))
    try:
        return await ctx.backends.auth.SignUp(signup, timeout=ctx.settings.auth_timeout_s)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.ALREADY_EXISTS:
            raise ApiError(
                409,
                "An account with this email already exists.",
                errors={"email": "An account with this email already exists."},
            ) from None
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            violations = field_violations(error)
            if violations:
                raise invalid_fields(violations) from None
        raise_if_throttled(error)
        raise to_api_error(error, "authentication") from None


@router.post("/auth/signup/check")
async def check_sign_up(body: SignUpDraft) -> dict[str, dict[str, str]]:
    """The sign-up rules' per-field messages for a draft form, without creating anything.

    The web UI calls this as the user fills the form, so its client-side messages are the server's
    own (services/auth/validation.py) and cannot drift from what POST /auth/signup answers.
    """
    try:
        validate_sign_up(body.model_dump())
    except ValidationError as error:
        return {"errors": error.violations}
    return {"errors": {}}


@router.post("/auth/login")
async def log_in(body: LogInBody, request: Request, response: Response, ctx: ContextDep) -> dict:
    # Nothing longer than the longest valid email or password can log in: cut there, a megabyte of
    # password fails as any wrong one does, not as a gRPC message over the auth service's limit.
    login = auth_pb2.LogInRequest(email=body.email[:EMAIL_MAX_LENGTH + 1],
                                  password=body.password[:PASSWORD_MAX_LENGTH + 1], client_ip=client_ip(request))
    try:
        session = await ctx.backends.auth.LogIn(login, timeout=ctx.settings.auth_timeout_s)
    except grpc.aio.AioRpcError as error:
        refusal = _log_in_refusal(error)
        # A failure on an email with an account is that account's event (the auth service names it,
        # to the gateway only); on an unknown email it concerns nobody and is for operators only.
        account = error_info(error, AUTH_ERROR_DOMAIN).get("account_id")
        await audit.record(ctx, audit.entry(request, "log_in", audit.outcome_of(refusal.status_code), account),
                           required=False)
        raise refusal from None
    if not await audit.record(ctx, audit.entry(request, "log_in", "success", session.user.id), required=False):
        # Access that cannot be audited is not granted: end the session just made.
        with contextlib.suppress(grpc.aio.AioRpcError):
            await ctx.backends.auth.LogOut(auth_pb2.LogOutRequest(access_token=session.access_token),
                                           timeout=ctx.settings.auth_timeout_s)
        raise ApiError(503, audit.UNRECORDED, headers={"Retry-After": "5"})
    expires_at = session.expires_at.ToDatetime(tzinfo=UTC)
    max_age = max(0, int((expires_at - datetime.now(UTC)).total_seconds()))
    response.set_cookie(
        ctx.settings.cookie_name,
        session.access_token,
        max_age=max_age,
        expires=expires_at,
        path="/",
        secure=bool(ctx.settings.cookie_secure),
        httponly=True,
        samesite="lax",
    )
    return {
        "access_token": session.access_token,
        "token_type": "bearer",
        "expires_at": iso_utc(expires_at),
        "user": user_json(session.user),
    }


def _log_in_refusal(error: grpc.aio.AioRpcError) -> ApiError:
    """The answer to a log-in the auth service refused or could not take."""
    code = error.code()
    if code in {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}:
        # One message whether or not the email exists.
        return ApiError(401, BAD_CREDENTIALS, headers={"WWW-Authenticate": "Bearer"})
    try:
        raise_if_throttled(error)
    except ApiError as throttled:
        return throttled
    if is_unreachable(error):
        return unavailable("authentication")
    return to_api_error(error, "authentication")


@router.post("/auth/logout", status_code=204)
async def log_out(request: Request, ctx: ContextDep) -> Response:
    found = token_from_request(request, ctx.settings.cookie_name)
    if found is None:
        raise ApiError(401, NOT_AUTHENTICATED, headers={"WWW-Authenticate": "Bearer"})
    token, via_cookie = found
    if lacks_csrf_header(request, via_cookie):
        try:
            await authenticate_token(ctx, token)
        except ApiError as error:
            if error.status_code != 401:
                raise
            # A dead session: nothing a cross-site request could end; clear the cookie as below.
        else:
            raise csrf_refusal()
    ended_for = ""
    try:
        reply = await ctx.backends.auth.LogOut(
            auth_pb2.LogOutRequest(access_token=token), timeout=ctx.settings.auth_timeout_s
        )
        ended_for = reply.user_id
    except grpc.aio.AioRpcError as error:
        if error.code() not in {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT}:
            raise to_api_error(error, "authentication") from None
        # An already invalid token: logging out is idempotent.
    finally:
        # After the call, so no verification that saw the session live is kept past it; whatever
        # its outcome (a failed call may still have ended the session).
        ctx.verified_sessions.forget_token(token)
    # A token that ended no session (already ended, or never valid) concerns no known account.
    await audit.record(ctx, audit.entry(request, "log_out", "success" if ended_for else "failure",
                                        ended_for or None), required=False)
    return _without_session_cookie(ctx)


def _without_session_cookie(ctx: GatewayContext) -> Response:
    """A 204 that also removes the web UI's session cookie."""
    response = Response(status_code=204)
    response.delete_cookie(
        ctx.settings.cookie_name,
        path="/",
        secure=bool(ctx.settings.cookie_secure),
        httponly=True,
        samesite="lax",
    )
    return response


@router.post("/auth/logout-all", status_code=204)
async def log_out_all(request: Request, caller: CallerDep, ctx: ContextDep) -> Response:
    """End every session of the caller's account, this one included (a lost or shared device)."""
    async with audit.refusals_recorded(ctx, request, "log_out_all", caller.user.id):
        await _log_out_all(caller, ctx)
    await audit.record(ctx, audit.entry(request, "log_out_all", "success", caller.user.id), required=False)
    return _without_session_cookie(ctx)


async def _log_out_all(caller: Caller, ctx: GatewayContext) -> None:
    try:
        await ctx.backends.auth.LogOutAll(
            auth_pb2.LogOutAllRequest(access_token=caller.token), timeout=ctx.settings.auth_timeout_s
        )
    except grpc.aio.AioRpcError as error:
        if error.code() in {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT}:
            raise ApiError(401, BAD_TOKEN, headers={"WWW-Authenticate": "Bearer"}) from None
        raise to_api_error(error, "authentication") from None
    finally:
        ctx.verified_sessions.forget_user(caller.user.id)


@router.post("/auth/password", status_code=204)
async def change_password(
    body: ChangePasswordBody, request: Request, caller: CallerDep, ctx: ContextDep
) -> Response:
    """Set a new password (the current one required) and end every other session of the account;
    this session stays. 422 with errors.new_password for a password the rules refuse, 401 with
    errors.current_password for a wrong current one, 429 when the account's failures are throttled."""
    async with audit.refusals_recorded(ctx, request, "password_change", caller.user.id):
        await _change_password(body, request, caller, ctx)
    await audit.record(ctx, audit.entry(request, "password_change", "success", caller.user.id), required=False)
    return Response(status_code=204)


async def _change_password(body: ChangePasswordBody, request: Request, caller: Caller, ctx: GatewayContext) -> None:
    try:
        # Checked here too (the auth service stays the authority): a megabyte of new password gets
        # its 422 without a gRPC message over the auth service's size limit.
        validate_new_password(body.new_password, caller.user.email)
    except ValidationError as error:
        raise invalid_fields(error.violations) from None
    change = auth_pb2.ChangePasswordRequest(
        access_token=caller.token,
        current_password=body.current_password[:PASSWORD_MAX_LENGTH + 1],
        new_password=body.new_password,
        client_ip=client_ip(request),
    )
    try:
        await ctx.backends.auth.ChangePassword(change, timeout=ctx.settings.auth_timeout_s)
    except grpc.aio.AioRpcError as error:
        code = error.code()
        violations = field_violations(error) if code in {
            grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT} else {}
        if code == grpc.StatusCode.UNAUTHENTICATED and "current_password" in violations:
            raise ApiError(401, violations["current_password"], errors=violations) from None
        if code == grpc.StatusCode.UNAUTHENTICATED:
            raise ApiError(401, BAD_TOKEN, headers={"WWW-Authenticate": "Bearer"}) from None
        if code == grpc.StatusCode.INVALID_ARGUMENT and violations:
            raise invalid_fields(violations) from None
        raise_if_throttled(error)
        raise to_api_error(error, "authentication") from None
    finally:
        # The account's other sessions were ended (or may have been, by a call that failed): none of
        # its verified sessions is kept; this one is verified again at its next request.
        ctx.verified_sessions.forget_user(caller.user.id)


@router.get("/me")
async def me(caller: CallerDep) -> dict:
    return user_json(caller.user)
