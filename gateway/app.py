"""The gateway app factory: `create_app(settings)` builds the public FastAPI app; start-up opens the
database (migrating it, or checking it is migrated), the blob stores and one gRPC channel per
backend; shutdown closes them.

`create_app` also builds the internal app (`app.state.internal`, see `internal_app`): the operational
endpoints on their own port, sharing the public app's context."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from importlib import resources
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import FastAPI, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import (accounts, activity, audit, blob_protocol, diagnoses, model_files, operations, previews,
                     web)
from gateway.context import GatewayContext
from gateway.database import create_database_engine, migrate, session_factory, wait_for_schema
from gateway.errors import error_response, install_error_handlers
from gateway.grpc_clients import Backends
from gateway.metrics import GatewayMetrics, MetricsMiddleware
from gateway.model_catalog import ModelCatalog
from gateway.session_cache import SessionCache
from gateway.settings import FORM_OVERHEAD_BYTES, GatewaySettings
from gateway.storage import blob_stores
from gateway.upload_memory import UploadMemory
from gateway.upload_queue import UploadQueue
from services.registry import model_specs

STATIC_DIR = Path(__file__).parent / "static"

# Swagger UI 5's files (the first to read OpenAPI 3.1, which FastAPI writes) as the fastapi-offline
# package ships them: served from here, no CDN. (swagger-ui-bundle carries Swagger UI 4.)
SWAGGER_UI_DIR = Path(str(resources.files("fastapi_offline") / "static"))
SWAGGER_UI_URL = "/static/swagger-ui"


def content_security_policy(*script_hashes: str) -> str:
    """The gateway's CSP: everything from this origin only; `script_hashes` (base64 SHA-256) admit
    those inline scripts and no other (the /docs page's one initialiser)."""
    scripts = " ".join(["'self'", *(f"'sha256-{digest}'" for digest in script_hashes)])
    return (
        f"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src {scripts}; "
        "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
    )


_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"content-security-policy", content_security_policy().encode()),
]
_CACHEABLE_PATHS = ("/static/", "/favicon.ico")
_NO_STORE = (b"cache-control", b"no-store")


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        # Pages and API answers hold a person's findings: no browser or proxy keeps them, so Back
        # after log-out on a shared computer shows nothing. Static files, and the images (their
        # own ETag-revalidated private caching), are left to cache.
        cacheable = scope["path"].startswith(_CACHEABLE_PATHS)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                present = {name.lower() for name, _ in message["headers"]}
                defaults = _SECURITY_HEADERS if cacheable else [*_SECURITY_HEADERS, _NO_STORE]
                message["headers"] = list(message["headers"]) + [
                    (name, value) for name, value in defaults if name not in present
                ]
            await send(message)

        await self.app(scope, receive, send_wrapper)


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body streams past the limit; FastAPI re-raises an HTTPException
    met while parsing a form or JSON body, so it answers 413 through the API's error handler."""


class BodySizeLimit:
    """Refuse a body over the limit with 413: by its declared Content-Length before reading it, and
    by counting the bytes of one sent without a length (chunked) so that it is never read past the
    limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        limit_mib = (max_bytes - FORM_OVERHEAD_BYTES) / (1024 * 1024)
        self.message = f"The request is larger than the {limit_mib:.0f} MiB upload limit."

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = -1
                if length < 0:
                    await error_response(400, "Invalid Content-Length header.")(scope, receive, send)
                    return
                if length > self.max_bytes:
                    await error_response(413, self.message)(scope, receive, send)
                    return

        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(413, self.message)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            # Read outside a route (no handler ran): answer here, unless a response already began.
            if response_started:
                raise
            await error_response(413, self.message)(scope, receive, send)


def install_api_docs(app: FastAPI) -> None:
    """`GET /docs`: FastAPI's Swagger UI page for /openapi.json, its files from SWAGGER_UI_URL. The
    page starts Swagger UI with one inline script, which its CSP admits by hash (nothing else inline)."""
    page = get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json",
        title=f"{app.title} API",
        swagger_js_url=f"{SWAGGER_UI_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER_UI_URL}/swagger-ui.css",
        swagger_favicon_url="/favicon.ico",
    )
    body = bytes(page.body)
    inline = re.findall(rb"<script>(.*?)</script>", body, flags=re.DOTALL)
    policy = content_security_policy(*(base64.b64encode(hashlib.sha256(s).digest()).decode() for s in inline))

    @app.get("/docs", include_in_schema=False)
    async def api_docs() -> HTMLResponse:
        return HTMLResponse(body, headers={"content-security-policy": policy})


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_database_engine(settings.database_url, settings.db_pool_size,
                                        settings.db_max_overflow, settings.db_pool_timeout_s)
        if settings.run_migrations:
            await run_in_threadpool(migrate, engine)
        else:   # the migration Job's work (deploy/k8s): serve only a schema at this release's head
            await run_in_threadpool(wait_for_schema, engine, settings.migration_wait_s)
        uploads, heatmaps = blob_stores(settings)
        backends = Backends(settings)  # channels must be created inside the running loop
        app.state.gateway = internal.state.gateway = ctx = GatewayContext(
            settings=settings,
            engine=engine,
            sessions=session_factory(engine),
            uploads=uploads,
            heatmaps=heatmaps,
            metrics=metrics,
            backends=backends,
            models=ModelCatalog(backends, model_specs(), settings.model_info_timeout_s),
            renders=anyio.CapacityLimiter(settings.concurrent_renders),
            upload_slots=UploadMemory(settings.concurrent_uploads, settings.upload_memory_bytes),
            upload_queue=UploadQueue(settings.pending_uploads, settings.upload_queue_bytes),
            verified_sessions=SessionCache(settings.auth_cache_seconds, settings.auth_cache_entries),
        )
        try:
            async with anyio.create_task_group() as background:
                background.start_soon(audit.purge_periodically, ctx)
                background.start_soon(blob_protocol.forget_pending_periodically, ctx)
                try:
                    yield
                finally:
                    background.cancel_scope.cancel()
        finally:
            internal.state.gateway = None
            await backends.close()
            engine.dispose()

    app = FastAPI(
        title="Dr.Tech",
        summary="Medical-image diagnosis API. Not for clinical use.",
        version="2026.11.1",
        lifespan=lifespan,
        # /docs is added below with Swagger UI's files served from here (FastAPI's own points at a CDN).
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    internal = _internal_app(settings)
    app.state.internal = internal
    install_error_handlers(app)
    app.include_router(accounts.router)
    app.include_router(activity.router)
    app.include_router(diagnoses.router)
    app.include_router(operations.router)
    app.include_router(model_files.router)
    app.include_router(previews.router)
    app.include_router(web.router)
    install_api_docs(app)
    # Before /static, which would otherwise answer (404) for Swagger UI's files too.
    app.mount(SWAGGER_UI_URL, StaticFiles(directory=SWAGGER_UI_DIR), name="swagger-ui")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    # Outermost last: security headers (on every answer, the size limit's 413 and 400 too), then the
    # size limit, then metrics (which sees the final status), then uploads' authentication, before
    # their body is read.
    app.add_middleware(accounts.AuthenticateUploadsFirst)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(SecurityHeaders)
    return app


def _internal_app(settings: GatewaySettings) -> FastAPI:
    """/healthz, /readyz and /readyz/gateway in detail, /metrics: for probes and Prometheus only.
    No lifespan of its own: the public app's start-up hands it the context."""
    internal = FastAPI(title="Dr.Tech gateway (internal)", docs_url=None, redoc_url=None, openapi_url=None)
    internal.state.settings = settings
    internal.state.gateway = None
    install_error_handlers(internal)
    internal.include_router(operations.internal_router)
    return internal


def internal_app(public: FastAPI) -> FastAPI:
    """The internal app `create_app` built beside `public`."""
    return public.state.internal
