"""What every request handler needs, built once at start-up and kept on `app.state.gateway`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, TypeVar

import anyio
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from gateway.errors import ApiError
from gateway.grpc_clients import Backends
from gateway.metrics import GatewayMetrics
from gateway.model_catalog import ModelCatalog
from gateway.session_cache import SessionCache
from gateway.settings import GatewaySettings
from gateway.storage import BlobStore, PendingForgets
from gateway.upload_memory import UploadMemory
from gateway.upload_queue import UploadQueue
from gateway.write_batches import WriteBatches

T = TypeVar("T")


@dataclass
class GatewayContext:
    settings: GatewaySettings
    engine: Engine
    sessions: sessionmaker
    uploads: BlobStore
    heatmaps: BlobStore
    metrics: GatewayMetrics
    backends: Backends
    # Which model service serves which exam type (gateway/model_catalog.py).
    models: ModelCatalog
    # At most settings.concurrent_renders image renders at a time (gateway.rendering.rendered_png).
    renders: anyio.CapacityLimiter
    # Uploads in memory at a time, bounded by count and bytes (gateway.admission.upload_slot).
    upload_slots: UploadMemory
    # Upload bodies received or waiting for an upload slot, bounded (accounts.AuthenticateUploadsFirst).
    upload_queue: UploadQueue
    # Sessions the auth service verified a moment ago (gateway.accounts.authenticate_token).
    verified_sessions: SessionCache
    # Blobs to forget once the records database answers again (gateway.blob_protocol).
    pending_forgets: PendingForgets = field(default_factory=PendingForgets)
    # Audit events stored together when they arrive together (gateway.audit.record).
    audit_writes: WriteBatches = field(default_factory=WriteBatches)
    # New diagnoses (blobs, record, audit event) committed together when their models answer
    # together (gateway.blob_protocol.keep_uploads_and_records).
    record_writes: WriteBatches = field(default_factory=WriteBatches)


def client_ip(request: Request) -> str:
    """The client's address: for the auth service's throttles and the audit trail."""
    # uvicorn's proxy-headers support already put the real address here for trusted proxies.
    return request.client.host if request.client else ""


def get_context(request: Request) -> GatewayContext:
    """The context the public app's start-up built. The internal app shares it, and may be asked
    before start-up has finished: then 503."""
    ctx = getattr(request.app.state, "gateway", None)
    if ctx is None:
        raise ApiError(503, "The gateway is starting.", headers={"Retry-After": "1"})
    return ctx


async def context_dependency(request: Request) -> GatewayContext:
    """get_context as a FastAPI dependency. A coroutine because FastAPI runs a plain function
    dependency in its thread pool: a thread hand-off per request (~0.2 ms of gateway CPU)."""
    return get_context(request)


# The request's GatewayContext, as a FastAPI dependency of the route handlers.
ContextDep = Annotated[GatewayContext, Depends(context_dependency)]


async def in_session(ctx: GatewayContext, work: Callable[[Session], T]) -> T:
    """Run blocking database work in the thread pool, in its own session."""

    def run() -> T:
        with ctx.sessions() as session:
            return work(session)

    return await run_in_threadpool(run)
