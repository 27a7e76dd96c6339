"""Operational endpoints: /healthz, /readyz, /metrics, and the public model cards."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from gateway.accounts import ContextDep
from gateway.errors import ApiError
from gateway.model_files import plot_names, plot_url
from gateway.serialization import model_card_json
from protos.drtech.v1 import diagnosis_pb2, diagnosis_pb2_grpc

log = logging.getLogger("gateway.operations")
router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (liveness): no backend is consulted."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(ctx: ContextDep) -> JSONResponse:
    """Ready when the auth service and every model service report SERVING (grpc.health.v1)."""
    services = await ctx.backends.check_health(ctx.settings.health_timeout_s)
    down = {name: state for name, state in services.items() if state != "SERVING"}
    if down:
        named = ", ".join(f"{name} ({state})" for name, state in down.items())
        return JSONResponse({"detail": f"not ready: {named}", "services": services}, status_code=503)
    return JSONResponse({"status": "ready", "services": services})


@router.get("/metrics")
async def metrics(request: Request, ctx: ContextDep) -> Response:
    body, content_type = ctx.metrics.render()
    return Response(body, media_type=content_type)


@router.get("/api/v1/models")
async def models(ctx: ContextDep) -> list[dict[str, Any]]:
    """Every model service's card, the router's last (no login), with URLs of its training plots.

    A service that cannot answer is left out and logged."""

    async def card(name: str, stub: diagnosis_pb2_grpc.DiagnosisServiceStub) -> dict[str, Any] | None:
        try:
            info = await stub.GetModelInfo(
                diagnosis_pb2.GetModelInfoRequest(), timeout=ctx.settings.model_info_timeout_s
            )
        except grpc.aio.AioRpcError as error:
            log.warning("model info for %s unavailable: %s", name, error.code().name)
            return None
        found = model_card_json(info)
        names = await run_in_threadpool(plot_names, ctx.settings.models_dir, found["task"])
        found["plots"] = [plot_url(found["task"], plot) for plot in names]
        return found

    stubs = [*ctx.backends.models.items(), ("auto", ctx.backends.router)]
    cards = await asyncio.gather(*(card(name, stub) for name, stub in stubs))
    found = [c for c in cards if c is not None]
    if not found:
        raise ApiError(503, "No model service is available right now.", headers={"Retry-After": "5"})
    return found
