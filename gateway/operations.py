"""Operational endpoints and the public model cards.

Two routers, for two listeners of one process (gateway/__main__.py): `router` on the public port
(/healthz, a /readyz that says ready or not and names what is down, without internal addresses;
/api/v1/models), and `internal_router` on DRTECH_GATEWAY_INTERNAL_PORT, which only probes and
Prometheus reach (/healthz, the detailed /readyz and /readyz/gateway, /metrics).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from gateway.context import ContextDep
from gateway.errors import ApiError
from gateway.grpc_clients import public_state
from gateway.model_files import plot_names, plot_url
from gateway.serialization import model_card_json

router = APIRouter()
internal_router = APIRouter()


@router.get("/healthz")
@internal_router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (liveness): no backend is consulted."""
    return {"status": "ok"}


@router.get("/readyz")
async def public_readyz(ctx: ContextDep) -> JSONResponse:
    """The whole platform (API.md), for anyone: 200 when the auth service and every model service
    report SERVING, else 503 naming what is down by name and state ("unreachable", not where)."""
    services = await ctx.backends.check_health(ctx.settings.health_timeout_s)
    return _platform_readiness({name: public_state(state) for name, state in services.items()})


@internal_router.get("/readyz")
async def readyz(ctx: ContextDep) -> JSONResponse:
    """The whole platform, in detail (internal port): as the public /readyz, with each unreachable
    backend's address and gRPC status. Not the k8s readiness probe: see below."""
    return _platform_readiness(await ctx.backends.check_health(ctx.settings.health_timeout_s))


def _platform_readiness(services: dict[str, str]) -> JSONResponse:
    down = {name: state for name, state in services.items() if state != "SERVING"}
    if down:
        return JSONResponse({"detail": _not_ready(down), "services": services}, status_code=503)
    return JSONResponse({"status": "ready", "services": services})


@internal_router.get("/readyz/gateway")
async def gateway_readyz(ctx: ContextDep) -> JSONResponse:
    """This gateway can serve (the k8s readiness probe): the auth service SERVING, its records
    database answering, its upload and heatmap stores writable.

    Model services are reported under "services" but not required: with one down, the gateway
    stays in the Service, the other exam types keep working, and uploads for the missing one get
    the API's own answer (a `failed` record to retry, or 503) instead of the ingress's.
    """
    timeout_s = ctx.settings.health_timeout_s
    services, database, uploads, heatmaps = await asyncio.gather(
        ctx.backends.check_health(timeout_s),
        _database_state(ctx.engine, timeout_s),
        run_in_threadpool(ctx.uploads.state),
        run_in_threadpool(ctx.heatmaps.state),
    )
    checks = {"auth": services["auth"], "database": database, "uploads": uploads, "heatmaps": heatmaps}
    failing = {name: state for name, state in checks.items() if state not in ("SERVING", "ok")}
    body = {"checks": checks, "services": services}
    if failing:
        return JSONResponse({"detail": _not_ready(failing), **body}, status_code=503)
    return JSONResponse({"status": "ready", **body})


def _not_ready(states: dict[str, str]) -> str:
    return "not ready: " + ", ".join(f"{name} ({state})" for name, state in states.items())


def database_state(engine: Engine) -> str:
    """"ok" when `SELECT 1` succeeds, else what failed. PostgreSQL engines ping pooled connections
    at checkout (pool_pre_ping), so a database that went away fails here rather than passing."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        cause = getattr(error, "orig", None) or error
        return f"unreachable ({type(cause).__name__})"
    return "ok"


async def _database_state(engine: Engine, timeout_s: float) -> str:
    try:
        return await asyncio.wait_for(run_in_threadpool(database_state, engine), timeout_s)
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"


@internal_router.get("/metrics")
async def metrics(ctx: ContextDep) -> Response:
    body, content_type = ctx.metrics.render()
    return Response(body, media_type=content_type)


@router.get("/api/v1/models")
async def models(ctx: ContextDep) -> list[dict[str, Any]]:
    """Every model service's card, the router's last (no login), with URLs of its training plots.

    A service that cannot answer is left out and logged."""
    found = []
    for info in await ctx.models.all_model_info():
        card = model_card_json(info)
        names = await run_in_threadpool(plot_names, ctx.settings.models_dir, card["task"],
                                        ctx.settings.model_addrs)
        card["plots"] = [plot_url(card["task"], plot) for plot in names]
        found.append(card)
    if not found:
        raise ApiError(503, "No model service is available right now.", headers={"Retry-After": "5"})
    return found
