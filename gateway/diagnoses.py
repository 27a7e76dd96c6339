"""Diagnoses: upload an image, have the right model service classify it, keep the record.

Policy (documented in the README):
- The upload is admitted first (gateway/admission.py): its header inspected once (type, size
  limits, DICOM transfer syntax and routing tags) against the model services' own limits, without
  decoding pixels, which the model service does anyway: not JPEG/PNG/DICOM -> 415, unreadable header
  or out of limits -> 422, nothing stored in either case. Pixel data that turn out corrupt are
  refused by the model service (below) -> 422, and nothing is stored.
- A model service that rejects the image (INVALID_ARGUMENT, e.g. too small) -> 415 or 422 by the
  reason in its trailing metadata (gateway/backend_errors.py), with its message; neither a record
  nor the upload is kept (the upload is stored only after the model service has answered, together
  with its record).
- A model service that cannot answer (UNAVAILABLE, DEADLINE_EXCEEDED, or any other failure) ->
  201 with status "failed" and a `detail`; the upload is kept and POST .../{id}/retry runs it again.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from functools import partial
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import Field

from gateway import audit, records
from gateway.accounts import Caller, CallerDep
from gateway.admission import admit_upload, served_exam_type, upload_slot
from gateway.auto_routing import NOT_A_KNOWN_KIND
from gateway.backend_errors import image_refusal_status, is_unreachable, refusal_reason
from gateway.blob_protocol import (NewRecord, delete_record, keep_retried_record, keep_uploads_and_records,
                                   store_unavailable)
from gateway.context import ContextDep, GatewayContext, in_session
from gateway.errors import ApiError
from gateway.paging import DEFAULT_PAGE_SIZE, MAX_OFFSET, OptionalQuery
from gateway.records import STATUS_COMPLETED, STATUS_FAILED, Diagnosis
from gateway.rendering import RENDER_REVISION, rendered_png
from gateway.routing import AUTO
from gateway.serialization import clean_extra, diagnosis_json, struct_to_dict
from gateway.storage import StoreUnavailable, sha256_hex
from gateway.whole_file import WholeBlobResponse
from protos.drtech.v1 import diagnosis_pb2
from services.core.errors import WrongKindOfImage
from services.core.imaging import DICOM

log = logging.getLogger("gateway.diagnoses")
router = APIRouter(prefix="/api/v1")


class ImageRefused(ApiError):
    """The model service answered, and refuses the image (415/422): no retry can change that."""


async def run_model(ctx: GatewayContext, record: Diagnosis, data: bytes) -> bytes | None:
    """Call the model service and fill in `record`; returns the heatmap PNG when there is one.

    A model service that is down or fails leaves the record `failed` (the upload is kept, to
    retry); an image the model rejects raises the 415/422 to answer with.
    """
    service = await ctx.models.resolve(record.exam_type)
    if service is None:   # a record of an exam type no model service serves any more
        raise ApiError(422, f"No model service serves {record.exam_type} now.")
    stub = ctx.backends.models[service]
    request = diagnosis_pb2.DiagnoseRequest(
        image=data, media_type=record.media_type, request_id=record.id, explain=record.explain
    )
    try:
        reply = await stub.Diagnose(request, timeout=ctx.settings.diagnose_timeout_s)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            reason = refusal_reason(error)
            if reason == WrongKindOfImage.reason and record.requested_exam_type == AUTO:
                # The router's choice was refused by that model's own check: to someone who chose
                # auto, it is an image of none of the kinds (the message the router's refusal gives).
                raise ImageRefused(422, NOT_A_KNOWN_KIND, errors={"file": NOT_A_KNOWN_KIND}) from None
            message = error.details() or "the model service rejected the image"
            raise ImageRefused(image_refusal_status(reason),
                               f"The {service} model cannot use this image: {message}") from None
        reason = "is unavailable" if is_unreachable(error) else "failed"
        log.warning(
            "diagnosis %s: %s service %s: %s %s",
            record.id,
            service,
            reason,
            error.code().name,
            error.details(),
        )
        record.status = STATUS_FAILED
        record.detail = (
            f"The {service} model service {reason} ({error.code().name}); the upload is kept, "
            f"retry with POST /api/v1/diagnoses/{record.id}/retry."
        )
        return None

    record.status = STATUS_COMPLETED
    record.detail = None
    record.label = reply.label
    record.label_display = reply.label_display
    record.confidence = reply.confidence
    record.probabilities = {p.label: p.probability for p in reply.probabilities}
    record.model_name = reply.model.name
    record.model_version = reply.model.version
    record.extra = clean_extra(struct_to_dict(reply.extra)) if reply.HasField("extra") else {}
    if reply.HasField("heatmap") and reply.heatmap.png:
        record.heatmap_sha256 = sha256_hex(reply.heatmap.png)
        record.heatmap_method = reply.heatmap.method or None
        return reply.heatmap.png
    return None


async def _owned(ctx: GatewayContext, diagnosis_id: str, user_id: str) -> Diagnosis:
    record = await in_session(ctx, lambda s: records.get_owned(s, diagnosis_id, user_id))
    if record is None:
        raise ApiError(404, f"No diagnosis {diagnosis_id} found for this account.")
    return record


@router.post("/diagnoses", status_code=201)
async def create_diagnosis(
    request: Request,
    caller: CallerDep,
    ctx: ContextDep,
    file: Annotated[UploadFile, File(description="JPEG, PNG or DICOM image")],
    exam_type: Annotated[str, Form(description="an exam type of GET /api/v1/models, or auto")],
    explain: Annotated[bool, Query(description="also compute a heatmap")] = False,
) -> dict[str, Any]:
    await served_exam_type(ctx, exam_type, also=(AUTO,))
    # The upload is in memory from the slot until it is stored.
    async with (audit.refusals_recorded(ctx, request, "diagnosis_create", caller.user.id),
                upload_slot(ctx, request, file.size)):
        return await _diagnose_upload(ctx, request, caller.user.id, file, exam_type, explain)


async def _diagnose_upload(
    ctx: GatewayContext, request: Request, user_id: str, file: UploadFile, exam_type: str, explain: bool
) -> dict[str, Any]:
    record_id = str(uuid.uuid4())
    upload = await admit_upload(ctx, file, exam_type, record_id)
    record = Diagnosis(
        id=record_id,
        user_id=user_id,
        exam_type=upload.exam_type,
        requested_exam_type=exam_type,
        status=STATUS_FAILED,
        image_sha256="",   # set when the upload is stored, with the record
        media_type=upload.media_type,
        explain=explain,
        probabilities={},
        extra={},
        created_at=records.utc_now(),
    )
    try:
        heatmap = await run_model(ctx, record, upload.data)
    except ApiError:
        ctx.metrics.diagnoses.labels(record.exam_type, "rejected").inc()
        raise   # nothing was stored: an upload is only kept with its record
    event = audit.entry(request, "diagnosis_create", "success", user_id, record.id)
    try:
        await ctx.record_writes.write(NewRecord(record, upload.data, heatmap, event),
                                      partial(keep_uploads_and_records, ctx))
    except StoreUnavailable as error:
        raise store_unavailable(error) from None
    audit.emit(event)
    ctx.metrics.diagnoses.labels(record.exam_type, record.status).inc()
    return diagnosis_json(record)


@router.post("/diagnoses/{diagnosis_id}/retry")
async def retry_diagnosis(
    diagnosis_id: str, request: Request, caller: CallerDep, ctx: ContextDep
) -> dict[str, Any]:
    """Run a failed diagnosis again on its kept upload (an extension of API.md)."""
    async with audit.refusals_recorded(ctx, request, "diagnosis_retry", caller.user.id, diagnosis_id):
        return await _retry(ctx, request, caller, diagnosis_id)


async def _retry(ctx: GatewayContext, request: Request, caller: Caller, diagnosis_id: str) -> dict[str, Any]:
    record = await _owned(ctx, diagnosis_id, caller.user.id)
    if record.status != STATUS_FAILED:
        raise ApiError(409, "This diagnosis has already completed; there is nothing to retry.")
    gone = ApiError(410, "The stored upload is gone; upload the image again.")
    try:
        size = await run_in_threadpool(ctx.uploads.size, record.image_sha256)
    except FileNotFoundError:
        raise gone from None
    # The stored upload is in memory while the model runs: room for its own size, not the largest's,
    # so the retries that follow an outage do not crowd out each other and new uploads.
    async with upload_slot(ctx, request, size):
        try:
            data = await run_in_threadpool(ctx.uploads.get, record.image_sha256)
        except FileNotFoundError:
            raise gone from None
        try:
            heatmap = await run_model(ctx, record, data)
        except ImageRefused as refusal:
            # The model answered, and refuses the image: retrying cannot help, so the record stops
            # saying it can (its detail becomes the refusal; it stays failed, for its owner to delete).
            record.detail = (f"{refusal.detail.rstrip('.')}. Retrying cannot change that; "
                             "delete this diagnosis.")
            await in_session(ctx, lambda s: records.save_retry(s, record))
            raise
        del data

    event = audit.entry(request, "diagnosis_retry", "success", caller.user.id, record.id)
    try:
        saved = await in_session(ctx, lambda s: keep_retried_record(ctx, s, record, heatmap, event))
    except StoreUnavailable as error:
        raise store_unavailable(error) from None
    if saved is not None:
        audit.emit(event)
    if saved is None:
        if await in_session(ctx, lambda s: records.get_owned(s, diagnosis_id, caller.user.id)) is None:
            raise ApiError(404, f"No diagnosis {diagnosis_id} found for this account.")
        raise ApiError(409, "This diagnosis has already completed; there is nothing to retry.")
    ctx.metrics.diagnoses.labels(saved.exam_type, saved.status).inc()
    return diagnosis_json(saved)


@router.get("/diagnoses")
async def list_diagnoses(
    caller: CallerDep,
    ctx: ContextDep,
    limit: OptionalQuery[Annotated[int, Field(ge=1, le=100)]] = None,
    offset: OptionalQuery[Annotated[int, Field(ge=0, le=MAX_OFFSET)]] = None,
    exam_type: OptionalQuery[str] = None,
) -> dict[str, Any]:
    if exam_type is not None:
        await served_exam_type(ctx, exam_type)
    limit = DEFAULT_PAGE_SIZE if limit is None else limit
    offset = 0 if offset is None else offset
    rows, total = await in_session(
        ctx, lambda s: records.list_owned(s, caller.user.id, limit=limit, offset=offset, exam_type=exam_type)
    )
    return {"items": [diagnosis_json(row) for row in rows], "total": total, "limit": limit, "offset": offset}


@router.get("/diagnoses/{diagnosis_id}")
async def get_diagnosis(diagnosis_id: str, request: Request, caller: CallerDep, ctx: ContextDep) -> dict[str, Any]:
    async with audit.refusals_recorded(ctx, request, "diagnosis_view", caller.user.id, diagnosis_id):
        record = await _owned(ctx, diagnosis_id, caller.user.id)
    await _served(ctx, request, "diagnosis_view", caller, record.id)
    return diagnosis_json(record)


async def _served(ctx: GatewayContext, request: Request, event: audit.Event, caller: Caller, record_id: str) -> None:
    """Record an access about to be served; 503 instead of the answer when that cannot be recorded."""
    await audit.record(ctx, audit.entry(request, event, "success", caller.user.id, record_id), required=True)


@router.delete("/diagnoses/{diagnosis_id}", status_code=204)
async def delete_diagnosis(diagnosis_id: str, request: Request, caller: CallerDep, ctx: ContextDep) -> Response:
    async with audit.refusals_recorded(ctx, request, "diagnosis_delete", caller.user.id, diagnosis_id):
        record = await _owned(ctx, diagnosis_id, caller.user.id)
    event = audit.entry(request, "diagnosis_delete", "success", caller.user.id, record.id)

    if await in_session(ctx, lambda s: delete_record(ctx, s, record.id, event)):
        audit.emit(event)
    else:   # the concurrent delete recorded the deletion; this request found nothing to delete
        await audit.record(ctx, replace(event, outcome="not_found"), required=False)
    return Response(status_code=204)


def _private(request: Request, etag: str) -> tuple[dict[str, str], bool]:
    """Headers for a user's own image, and whether the browser's copy is still current. `no-cache`:
    the browser asks again each time (a cheap 304), so after log-out or a delete the image is not
    shown from its cache without the server's say."""
    headers = {"Cache-Control": "private, no-cache", "ETag": etag}
    return headers, etag in {tag.strip() for tag in request.headers.get("if-none-match", "").split(",")}


@router.get("/diagnoses/{diagnosis_id}/image", response_class=Response)
async def get_image(
    diagnosis_id: str,
    request: Request,
    caller: CallerDep,
    ctx: ContextDep,
    max_side: Annotated[
        int | None, Query(ge=16, le=4096, description="a PNG at most this many px a side")
    ] = None,
) -> Response:
    """The stored upload; with `max_side`, a PNG scaled down to fit (thumbnails: a 20 MB photo or
    DICOM is not sent whole to draw a 96 px picture)."""
    async with audit.refusals_recorded(ctx, request, "diagnosis_image", caller.user.id, diagnosis_id):
        response = await _image(ctx, request, caller, diagnosis_id, max_side)
    try:
        await _served(ctx, request, "diagnosis_image", caller, diagnosis_id)
    except BaseException:
        if isinstance(response, WholeBlobResponse):   # opened, now not sent: its file or S3 body goes back
            await run_in_threadpool(response.close_unsent)
        raise
    return response


async def _image(ctx: GatewayContext, request: Request, caller: Caller, diagnosis_id: str,
                 max_side: int | None) -> Response:
    record = await _owned(ctx, diagnosis_id, caller.user.id)
    rendered = record.media_type == DICOM or max_side is not None
    etag = (f'"{record.image_sha256}-png{RENDER_REVISION}-{max_side or "full"}"' if rendered
            else f'"{record.image_sha256}"')
    headers, current = _private(request, etag)
    if current:
        if not await run_in_threadpool(ctx.uploads.exists, record.image_sha256):
            raise ApiError(410, "The stored upload is gone.")
        return Response(status_code=304, headers=headers)
    if not rendered:
        # Streamed in chunks from disk or S3, never held whole.
        try:
            blob = await run_in_threadpool(ctx.uploads.open, record.image_sha256)
        except FileNotFoundError:
            raise ApiError(410, "The stored upload is gone.") from None
        return WholeBlobResponse(blob, media_type=record.media_type, headers=headers)

    def read() -> bytes:
        try:
            return ctx.uploads.get(record.image_sha256)
        except FileNotFoundError:
            raise ApiError(410, "The stored upload is gone.") from None

    # Browsers cannot show DICOM: send a PNG of the decoded image (the original stays stored).
    return Response(await rendered_png(ctx, read, max_side), media_type="image/png", headers=headers)


@router.get("/diagnoses/{diagnosis_id}/heatmap", response_class=Response)
async def get_heatmap(diagnosis_id: str, request: Request, caller: CallerDep, ctx: ContextDep) -> Response:
    async with audit.refusals_recorded(ctx, request, "diagnosis_heatmap", caller.user.id, diagnosis_id):
        response = await _heatmap(ctx, request, caller, diagnosis_id)
    await _served(ctx, request, "diagnosis_heatmap", caller, diagnosis_id)
    return response


async def _heatmap(ctx: GatewayContext, request: Request, caller: Caller, diagnosis_id: str) -> Response:
    record = await _owned(ctx, diagnosis_id, caller.user.id)
    if not record.heatmap_sha256:
        if record.explain and record.status == STATUS_FAILED:   # asked for, but the model has not answered
            raise ApiError(404, "This diagnosis has no heatmap yet: it failed before the model answered; "
                                f"retry it (POST /api/v1/diagnoses/{record.id}/retry) to get one.")
        raise ApiError(404, "This diagnosis has no heatmap; upload the image with explain=true to get one.")
    headers, current = _private(request, f'"{record.heatmap_sha256}"')
    if current:
        return Response(status_code=304, headers=headers)
    try:
        data = await run_in_threadpool(ctx.heatmaps.get, record.heatmap_sha256)
    except FileNotFoundError:
        raise ApiError(410, "The stored heatmap is gone.") from None
    return Response(data, media_type="image/png", headers=headers)
