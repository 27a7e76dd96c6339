"""Diagnoses: upload an image, have the right model service classify it, keep the record.

Policy (documented in the README):
- The upload is inspected here once (type, size limits, DICOM transfer syntax and routing tags),
  against the model services' own limits, without decoding pixels, which the model service does
  anyway: not JPEG/PNG/DICOM -> 415, unreadable header or out of limits -> 422, nothing stored in
  either case. Pixel data that turn out corrupt are refused by the model service (below) -> 422,
  and nothing is stored.
- A model service that rejects the image (INVALID_ARGUMENT, e.g. too small) -> 415 or 422 by the
  reason in its trailing metadata (gateway/backend_errors.py), with its message; neither a record
  nor the upload is kept (the upload is stored only after the model service has answered, together
  with its record).
- A model service that cannot answer (UNAVAILABLE, DEADLINE_EXCEEDED, or any other failure) ->
  201 with status "failed" and a `detail`; the upload is kept and POST .../{id}/retry runs it again.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Annotated, Any, TypeVar

import anyio
import grpc
from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from pydantic import BeforeValidator, Field
from sqlalchemy.orm import Session

from gateway import audit, records
from gateway.accounts import Caller, CallerDep
from gateway.auto_routing import classify_exam_type
from gateway.backend_errors import image_refusal_status, is_unreachable, refusal_reason
from gateway.context import ContextDep, GatewayContext
from gateway.errors import ApiError, ClientGone, invalid_fields
from gateway.records import STATUS_COMPLETED, STATUS_FAILED, Diagnosis
from gateway.routing import AUTO, NotServed, choose_exam_type
from gateway.serialization import clean_extra, diagnosis_json, struct_to_dict
from gateway.storage import StoreUnavailable, sha256_hex
from gateway.whole_file import WholeBlobResponse
from protos.drtech.v1 import diagnosis_pb2
from services.core.errors import InvalidImage
from services.core.imaging import DICOM, ImageLimits, Inspection, decode, inspect_image
from services.core.memory import release_after

log = logging.getLogger("gateway.diagnoses")
router = APIRouter(prefix="/api/v1")

T = TypeVar("T")
# Far past any history, and within the 64-bit integer SQLite and PostgreSQL take for OFFSET.
MAX_OFFSET = 1_000_000_000
DEFAULT_PAGE_SIZE = 20


async def served_exam_type(ctx: GatewayContext, exam_type: str, also: tuple[str, ...] = ()) -> None:
    """422 for an exam type that no model service serves (the services say which: ctx.models), other
    than those in `also`."""
    if exam_type in also or (exam_type != AUTO and await ctx.models.resolve(exam_type) is not None):
        return
    choices = [*(name for name in ctx.models.exam_types() if name != AUTO), *also]
    raise invalid_fields({"exam_type": f"Input should be one of: {', '.join(choices)}."})


async def in_session(ctx: GatewayContext, work: Callable[[Session], T]) -> T:
    """Run blocking database work in the thread pool, in its own session."""

    def run() -> T:
        with ctx.sessions() as session:
            return work(session)

    return await run_in_threadpool(run)


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.0f} MiB"


def _sized(data: bytes, max_bytes: int) -> bytes:
    """`data` (read up to max_bytes + 1), or 413 / 422 for a file too large or empty."""
    if len(data) > max_bytes:
        raise ApiError(413, f"The file is larger than the {_mib(max_bytes)} limit.")
    if not data:
        raise invalid_fields({"file": "The file is empty."})
    return data


async def read_upload(upload: UploadFile, max_bytes: int) -> bytes:
    return _sized(await upload.read(max_bytes + 1), max_bytes)


def read_spooled_upload(upload: UploadFile, max_bytes: int) -> bytes:
    """read_upload from a worker thread (blocking): the body as Starlette spooled it."""
    upload.file.seek(0)
    return _sized(upload.file.read(max_bytes + 1), max_bytes)


def check_image(data: bytes, limits: ImageLimits) -> Inspection:
    """The inspection (type, size, DICOM routing tags) of an upload whose header passes; 415 or 422
    otherwise. Blocking.

    Pixels are not decoded here: the model service decodes them once (a 1024x1024 JPEG: ~5 ms
    of gateway CPU per upload saved).
    """
    try:
        return inspect_image(data, None, limits)
    except InvalidImage as error:
        status = image_refusal_status(error.reason)
        prefix = "Unsupported file" if status == 415 else "The image cannot be used"
        raise ApiError(status, f"{prefix}: {error}.") from None


def timed_check_image(ctx: GatewayContext, data: bytes) -> Inspection:
    """check_image under the settings' limits, its CPU counted as the stage "check_upload". Blocking."""
    with ctx.metrics.stage_cpu.stage("check_upload"):
        return check_image(data, ctx.settings.image_limits())


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
            message = error.details() or "the model service rejected the image"
            status = image_refusal_status(refusal_reason(error))
            raise ApiError(status, f"The {service} model cannot use this image: {message}") from None
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


def _keep_blobs_after_commit(ctx: GatewayContext, record: Diagnosis, data: bytes | None,
                             heatmap: bytes | None) -> None:
    """The writer's half of the blob protocol (gateway/storage.py): once the record is committed, put
    back a blob that a concurrent delete of another record with the same bytes removed meanwhile."""
    if data is not None and not ctx.uploads.exists(record.image_sha256):
        ctx.uploads.put(data)
    if heatmap is not None and record.heatmap_sha256 and not ctx.heatmaps.exists(record.heatmap_sha256):
        ctx.heatmaps.put(heatmap)


def keep_upload_and_record(
    ctx: GatewayContext, session: Session, record: Diagnosis, data: bytes, heatmap: bytes | None,
    event: audit.Entry | None = None,
) -> Diagnosis:
    """Store the upload and heatmap, then their record, and `event` (its audit event) in the same
    transaction. Blocking: one thread hand-off for all the steps, which as separate hand-offs cost
    the gateway ~0.2 ms of CPU each (`python -m benchmarks.ab`). Their CPU is counted as the stages
    "store" (blobs) and "record" (the database rows)."""
    stages = ctx.metrics.stage_cpu
    with stages.stage("store"):
        record.image_sha256 = ctx.uploads.put(data)
    try:
        with stages.stage("store"):
            if heatmap is not None:
                ctx.heatmaps.put(heatmap)
        with stages.stage("record"):
            if event is not None:
                audit.add(session, event)
            records.add(session, record)
    except BaseException:
        # No record names the blobs just stored: do not leave a medical image nobody can delete.
        try:
            session.rollback()
        finally:
            _forget_quietly(ctx, record.image_sha256, record.heatmap_sha256)
        raise
    with stages.stage("store"):
        _keep_blobs_after_commit(ctx, record, data, heatmap)
    return record


def forget_blobs(ctx: GatewayContext, image_sha: str | None, heatmap_sha: str | None) -> None:
    """Delete stored blobs that no record names any more (the deleter's half of the blob protocol).
    Blocking."""
    for store, digest, in_use in (
        (ctx.uploads, image_sha, records.image_in_use),
        (ctx.heatmaps, heatmap_sha, records.heatmap_in_use),
    ):
        if not digest:
            continue

        def named(digest: str = digest, in_use: Callable[[Session, str], bool] = in_use) -> bool:
            with ctx.sessions() as session:
                return in_use(session, digest)

        if not named():
            store.delete_unused(digest, named)


def _forget_quietly(ctx: GatewayContext, image_sha: str | None, heatmap_sha: str | None) -> None:
    """forget_blobs where its failure must not hide what the caller is handling (the record is already
    gone, or never came to be): logged, and tried again in the background (forget_pending_periodically)
    until the records database answers, so no blob is left that no record names."""
    try:
        forget_blobs(ctx, image_sha, heatmap_sha)
    except Exception:
        log.exception("could not delete unused blobs image=%s heatmap=%s; trying again in %.0f s",
                      image_sha, heatmap_sha, ctx.settings.blob_forget_retry_s)
        ctx.pending_forgets.add(image_sha, heatmap_sha)


def forget_pending(ctx: GatewayContext) -> int:
    """Forget the blobs _forget_quietly could not (the database was unreachable); those that fail again
    stay pending. Safe at any time: forget_blobs asks the database whether a record names each blob,
    through the blob protocol (gateway/storage.py). How many stay pending. Blocking."""
    for image_sha, heatmap_sha in ctx.pending_forgets.take():
        try:
            forget_blobs(ctx, image_sha, heatmap_sha)
        except Exception as error:  # noqa: BLE001 - still unreachable: next time
            log.warning("still cannot delete unused blobs image=%s heatmap=%s: %s", image_sha, heatmap_sha, error)
            ctx.pending_forgets.add(image_sha, heatmap_sha)
    return len(ctx.pending_forgets)


async def forget_pending_periodically(ctx: GatewayContext) -> None:
    """forget_pending every `blob_forget_retry_s` until cancelled."""
    while True:
        await anyio.sleep(ctx.settings.blob_forget_retry_s)
        if len(ctx.pending_forgets):
            await run_in_threadpool(forget_pending, ctx)


def store_unavailable(error: StoreUnavailable) -> ApiError:
    """503 for a blob store that cannot be written (disk full, read-only): nothing was kept, and the
    request succeeds once the store has room again."""
    log.error("blob store cannot be written: %s", error)
    return ApiError(503, f"The image storage cannot keep anything right now ({error}); nothing was kept, "
                         "try again shortly.", headers={"Retry-After": "30"})


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
    async with (audit.refusals_recorded(ctx, request, "diagnosis_create", caller.user.id),
                upload_slot(ctx, request)):    # the upload is in memory from here until it is stored
        return await _diagnose_upload(ctx, request, caller.user.id, file, exam_type, explain)


@asynccontextmanager
async def upload_slot(ctx: GatewayContext, request: Request) -> AsyncIterator[None]:
    """One of settings.concurrent_uploads slots, waited for at most settings.upload_wait_s (then 503
    with Retry-After); a client that left meanwhile is not served (no model call for nobody)."""
    try:
        with anyio.fail_after(ctx.settings.upload_wait_s):
            await ctx.upload_slots.acquire()
    except TimeoutError:
        raise ApiError(503, "The gateway is busy with other uploads; try again shortly.",
                       headers={"Retry-After": "5"}) from None
    try:
        if await request.is_disconnected():
            raise ClientGone()
        yield
    finally:
        ctx.upload_slots.release()


async def _diagnose_upload(
    ctx: GatewayContext, request: Request, user_id: str, file: UploadFile, exam_type: str, explain: bool
) -> dict[str, Any]:
    data = await read_upload(file, ctx.settings.max_upload_bytes)
    inspection = await run_in_threadpool(timed_check_image, ctx, data)
    # Only what routing needs is kept: the opened file (a parsed DICOM holds its pixel data) is not.
    media_type, tags = inspection.media_type, inspection.routing_tags
    del inspection
    record_id = str(uuid.uuid4())
    try:
        chosen = choose_exam_type(exam_type, media_type, tags)
    except NotServed as error:
        raise ApiError(422, str(error), errors={"file": str(error)}) from None
    if chosen is None:
        # auto without DICOM routing tags: the router model decides, or refuses a foreign image.
        chosen = await classify_exam_type(ctx, data, media_type, record_id)

    record = Diagnosis(
        id=record_id,
        user_id=user_id,
        exam_type=chosen,
        requested_exam_type=exam_type,
        status=STATUS_FAILED,
        image_sha256="",   # set when the upload is stored, with the record
        media_type=media_type,
        explain=explain,
        probabilities={},
        extra={},
        created_at=records.utc_now(),
    )
    try:
        heatmap = await run_model(ctx, record, data)
    except ApiError:
        ctx.metrics.diagnoses.labels(chosen, "rejected").inc()
        raise   # nothing was stored: an upload is only kept with its record
    event = audit.entry(request, "diagnosis_create", "success", user_id, record.id)
    try:
        record = await in_session(ctx, lambda s: keep_upload_and_record(ctx, s, record, data, heatmap, event))
    except StoreUnavailable as error:
        raise store_unavailable(error) from None
    audit.emit(event)
    ctx.metrics.diagnoses.labels(chosen, record.status).inc()
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
    async with upload_slot(ctx, request):    # the stored upload is in memory while the model runs
        try:
            data = await run_in_threadpool(ctx.uploads.get, record.image_sha256)
        except FileNotFoundError:
            raise ApiError(410, "The stored upload is gone; upload the image again.") from None
        heatmap = await run_model(ctx, record, data)
        del data

    def save(session: Session) -> Diagnosis | None:
        if heatmap is not None:
            ctx.heatmaps.put(heatmap)
        # Only a record that still exists and is still failed: a delete or another retry may have
        # come first while the model ran (merging would bring a deleted record back).
        saved = records.save_retry(session, record, also=[event.row()])
        if saved is None:
            forget_blobs(ctx, None, record.heatmap_sha256)
        else:
            _keep_blobs_after_commit(ctx, saved, None, heatmap)
        return saved

    event = audit.entry(request, "diagnosis_retry", "success", caller.user.id, record.id)
    try:
        saved = await in_session(ctx, save)
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


def _empty_is_absent(value: Any) -> Any:
    return None if value == "" else value


# A query parameter that may be left out, or sent empty: API.md writes the list's query as
# `?limit=&offset=&exam_type=`, and an empty value there means "not given".
OptionalQuery = Annotated[T | None, BeforeValidator(_empty_is_absent), Query()]


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

    def delete(session: Session) -> bool:
        blobs = records.delete(session, record.id, also=[event.row()])
        if blobs is not None:   # else a concurrent delete came first and forgets the blobs
            _forget_quietly(ctx, *blobs)
        return blobs is not None

    if await in_session(ctx, delete):
        audit.emit(event)
    else:   # the concurrent delete recorded the deletion; this request found nothing to delete
        await audit.record(ctx, replace(event, outcome="not_found"), required=False)
    return Response(status_code=204)


# Part of a rendered image's ETag: bump it when render_png's output changes (decoding, windowing,
# scaling), so browsers revalidating an old render get the new one instead of a 304.
RENDER_REVISION = 1


def render_png(
    data: bytes | Inspection, max_side: int | None = None, limits: ImageLimits | None = None
) -> bytes:
    """A PNG of the decoded image (at most `max_side` px a side when given); 422 when the pixels
    cannot be decoded (a truncated PNG, a DICOM with less pixel data than its header says), which
    the header check alone does not catch. `data`: stored bytes, or an upload check_image inspected
    (decoded from there, not opened again). `limits`: the upload limits the image was accepted
    under (default: ImageLimits' own). Blocking."""
    try:
        inspection = (data if isinstance(data, Inspection)
                      else inspect_image(data, None, limits or ImageLimits()))
        image = decode(inspection).image   # decode lets go of the opened file
    except InvalidImage as error:
        raise ApiError(422, f"The image cannot be shown: {error}.") from None
    pixels = image.width * image.height
    if max_side is not None:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    del image
    release_after(pixels)
    return buffer.getvalue()


async def rendered_png(
    ctx: GatewayContext,
    data: bytes | Inspection | Callable[[], bytes | Inspection],
    max_side: int | None = None,
) -> bytes:
    """render_png in a worker thread, at most `settings.concurrent_renders` at a time. `data` may be a
    function that reads the bytes (or inspects them), so an upload is only loaded once its render's
    turn comes."""
    limits = ctx.settings.image_limits()

    def render() -> bytes:
        return render_png(data() if callable(data) else data, max_side, limits)

    return await anyio.to_thread.run_sync(render, limiter=ctx.renders)


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
    await _served(ctx, request, "diagnosis_image", caller, diagnosis_id)
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
        raise ApiError(404, "This diagnosis has no heatmap; upload the image with explain=true to get one.")
    headers, current = _private(request, f'"{record.heatmap_sha256}"')
    if current:
        return Response(status_code=304, headers=headers)
    try:
        data = await run_in_threadpool(ctx.heatmaps.get, record.heatmap_sha256)
    except FileNotFoundError:
        raise ApiError(410, "The stored heatmap is gone.") from None
    return Response(data, media_type="image/png", headers=headers)
