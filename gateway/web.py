"""The web UI: server-rendered pages (Jinja2) whose scripts call the JSON API with the session cookie.

Pages that need an account check the cookie here and send a visitor without a valid session to the
log-in page, so nobody sees an empty shell first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from gateway.context import get_context
from gateway.session_cache import verified_user
from protos.drtech.v1 import auth_pb2
from services.auth import validation

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
FAVICON = Path(__file__).parent / "static" / "favicon.ico"



class AuthServiceDown(Exception):
    """The auth service did not answer whether the session is valid."""


async def _signed_in_user(request: Request) -> auth_pb2.User | None:
    """The session cookie's user; None without a valid session. Raises AuthServiceDown when the auth
    service cannot say (a page that needs the account must not send its user to log in then)."""
    ctx = get_context(request)
    token = request.cookies.get(ctx.settings.cookie_name)
    if not token:
        return None
    try:
        return await verified_user(ctx.backends.auth, ctx.verified_sessions, token,
                                   ctx.settings.auth_timeout_s)
    except grpc.aio.AioRpcError as error:
        if error.code() in {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT}:
            return None
        raise AuthServiceDown from None


async def _visitor(request: Request) -> auth_pb2.User | None:
    """For public pages: when the session cannot be checked, the page is shown signed out."""
    try:
        return await _signed_in_user(request)
    except AuthServiceDown:
        return None


def _exam_types(request: Request) -> list[tuple[str, str, str]]:
    """(exam type, its name, what it finds) of every model service, as the services say (the router's
    "auto" last); none while the gateway is starting."""
    ctx = getattr(request.app.state, "gateway", None)
    exams = ctx.models.exams() if ctx is not None else []
    return [(exam.exam_type, exam.display_name, exam.summary) for exam in exams]


def _page(request: Request, template: str, user: auth_pb2.User | None, status_code: int = 200,
          **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(
        request, template,
        {"user": user, "exam_types": _exam_types(request), "active": template, "section": None, **context},
        status_code=status_code,
    )


async def _account_page(request: Request, template: str, **context: Any) -> Response:
    """A page for signed-in users: log-in first without a session; 503 if that cannot be checked."""
    try:
        user = await _signed_in_user(request)
    except AuthServiceDown:
        return _page(request, "unavailable.html", None, status_code=503)
    if user is None:
        return _to_login(request)
    return _page(request, template, user, **context)


def _to_login(request: Request) -> RedirectResponse:
    return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)


@router.get("/favicon.ico")
async def favicon() -> FileResponse:
    """The pages link it; browsers also ask for it unprompted (a 404 on every page before)."""
    return FileResponse(FAVICON, media_type="image/vnd.microsoft.icon")


@router.get("/", response_class=HTMLResponse)
async def home(request: Request) -> Response:
    return _page(request, "home.html", await _visitor(request))


@router.get("/signup", response_class=HTMLResponse)
async def signup_page(request: Request) -> Response:
    return _page(
        request,
        "signup.html",
        await _visitor(request),
        genders=validation.GENDERS,
        password_min=validation.PASSWORD_MIN_LENGTH,
        password_max=validation.PASSWORD_MAX_LENGTH,
        name_max=validation.NAME_MAX_LENGTH,
        address_max=validation.ADDRESS_MAX_LENGTH,
        place_max=validation.PLACE_MAX_LENGTH,
    )


def _same_site_path(target: str) -> bool:
    """Only a path on this site may follow log-in (no open redirect). Browsers read `\\` as `/` and
    drop tabs and newlines, so `/\\evil.example` or `/<tab>/evil.example` would leave the site."""
    return (target.startswith("/") and not target.startswith("//") and "\\" not in target
            and not any(ord(c) <= 0x20 or ord(c) == 0x7F for c in target))


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request) -> Response:
    next_path = request.query_params.get("next", "/app")
    if not _same_site_path(next_path):
        next_path = "/app"
    return _page(request, "login.html", await _visitor(request), next_path=next_path)


@router.get("/app", response_class=HTMLResponse)
async def client_page(request: Request) -> Response:
    return await _account_page(request, "client.html", diagnosis_id="",
                               max_upload_bytes=get_context(request).settings.max_upload_bytes)


@router.get("/history", response_class=HTMLResponse)
async def history_page(request: Request) -> Response:
    return await _account_page(request, "history.html")


@router.get("/activity", response_class=HTMLResponse)
async def activity_page(request: Request) -> Response:
    return await _account_page(request, "activity.html")


@router.get("/results/{diagnosis_id}", response_class=HTMLResponse)
async def result_page(request: Request, diagnosis_id: str) -> Response:
    # A stored result belongs to History, not to "New diagnosis" (whose page it shares).
    return await _account_page(request, "client.html", diagnosis_id=diagnosis_id, active=None,
                               section="history.html")


@router.get("/account", response_class=HTMLResponse)
async def account_page(request: Request) -> Response:
    return await _account_page(
        request,
        "account.html",
        password_min=validation.PASSWORD_MIN_LENGTH,
        password_max=validation.PASSWORD_MAX_LENGTH,
    )


@router.get("/models", response_class=HTMLResponse)
async def models_page(request: Request) -> Response:
    return _page(request, "models.html", await _visitor(request))
