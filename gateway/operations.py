"""Operational endpoints: /healthz, /readyz, /metrics, and the public model cards."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from gateway.accounts import ContextDep
from gateway.errors import ApiError
from gateway.serialization import model_card_json
from protos.drtech.v1 import diagnosis_pb2

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
    """Every model service's card (no login). A service that cannot answer is left out and logged."""

    async def card(exam_type: str) -> dict[str, Any] | None:
        try:
            info = await ctx.backends.models[exam_type].GetModelInfo(
                diagnosis_pb2.GetModelInfoRequest(), timeout=ctx.settings.model_info_timeout_s
            )
        except grpc.aio.AioRpcError as error:
            log.warning("model info for %s unavailable: %s", exam_type, error.code().name)
            return None
        return model_card_json(info)

    cards = await asyncio.gather(*(card(exam_type) for exam_type in ctx.backends.models))
    found = [c for c in cards if c is not None]
    if not found:
        raise ApiError(503, "No model service is available right now.", headers={"Retry-After": "5"})
    return found
