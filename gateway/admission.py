"""Upload admission: what happens to an upload before any model service diagnoses it.

- It waits for room in memory (upload_slot: settings.concurrent_uploads uploads and
  settings.upload_memory_bytes, three times each one's size): 503 past settings.upload_wait_s.
- It is read whole, up to settings.max_upload_bytes: larger -> 413, empty -> 422.
- Its header is inspected once (type, size limits, DICOM transfer syntax and routing tags) under the
  model services' own limits (settings.image_limits()), without decoding pixels, which the model
  service does anyway: not JPEG/PNG/DICOM -> 415, unreadable header or out of limits -> 422.
- Its exam type is chosen: the one asked for, a DICOM's from its routing tags (gateway/routing.py),
  or for `auto` without them the router model's answer (gateway/auto_routing.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from fastapi import Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from gateway.auto_routing import classify_exam_type
from gateway.backend_errors import image_refusal_status
from gateway.context import GatewayContext
from gateway.errors import ApiError, ClientGone, invalid_fields
from gateway.routing import AUTO, NotServed, choose_exam_type
from gateway.upload_memory import COPIES_IN_FLIGHT
from services.core.errors import InvalidImage
from services.core.imaging import JPEG, ImageLimits, Inspection, inspect_image, sniff_media_type


@dataclass(frozen=True)
class AdmittedUpload:
    data: bytes
    media_type: str
    exam_type: str   # the exam type to diagnose: the requested one, or what `auto` chose


async def served_exam_type(ctx: GatewayContext, exam_type: str, also: tuple[str, ...] = ()) -> None:
    """422 for an exam type that no model service serves (the services say which: ctx.models), other
    than those in `also`."""
    if exam_type in also or (exam_type != AUTO and await ctx.models.resolve(exam_type) is not None):
        return
    choices = [*(name for name in ctx.models.exam_types() if name != AUTO), *also]
    raise invalid_fields({"exam_type": f"Input should be one of: {', '.join(choices)}."})


@asynccontextmanager
async def upload_slot(ctx: GatewayContext, request: Request, size: int | None = None) -> AsyncIterator[None]:
    """Room in memory for an upload of `size` bytes (None: as large as accepted), waited for at most
    settings.upload_wait_s (then 503 with Retry-After); a client that left meanwhile is not served
    (no model call for nobody). Bounded by count and bytes: gateway/upload_memory.py."""
    largest = ctx.settings.max_upload_bytes
    held = COPIES_IN_FLIGHT * (largest if size is None else min(size, largest))
    try:
        with anyio.fail_after(ctx.settings.upload_wait_s):
            await ctx.upload_slots.acquire(held)
    except TimeoutError:
        raise ApiError(503, "The gateway is busy with other uploads; try again shortly.",
                       headers={"Retry-After": "5"}) from None
    try:
        if await request.is_disconnected():
            raise ClientGone()
        yield
    finally:
        ctx.upload_slots.release(held)


async def admit_upload(ctx: GatewayContext, file: UploadFile, exam_type: str, request_id: str) -> AdmittedUpload:
    """The upload read, checked and given the exam type to diagnose; 413, 415, 422 or 503 (the router
    model cannot answer `auto`) otherwise. `request_id` names the router model's call in its logs."""
    data = await _read_upload(file, ctx.settings.max_upload_bytes)
    if sniff_media_type(data) == JPEG:
        # On the event loop: a JPEG header's walk is bounded by the segment limits (1.7 ms for the
        # worst crafted one measured, 20 MiB of APP segments; ~0.07 ms for a real X-ray), and costs
        # less than a hand-off to a worker thread (gateway CPU per diagnosis 2.8 -> 2.6 ms). A PNG's
        # compressed text (16 ms for 8 chunks at Pillow's limit) and a DICOM's elements (35 ms for
        # 260 KiB of them) are not so bounded: a worker thread.
        inspection = _timed_check_image(ctx, data)
    else:
        inspection = await run_in_threadpool(_timed_check_image, ctx, data)
    # Only what routing needs is kept: the opened file (a parsed DICOM holds its pixel data) is not.
    media_type, tags = inspection.media_type, inspection.routing_tags
    del inspection
    try:
        chosen = choose_exam_type(exam_type, media_type, tags)
    except NotServed as error:
        raise ApiError(422, str(error), errors={"file": str(error)}) from None
    if chosen is None:
        # auto without DICOM routing tags: the router model decides, or refuses a foreign image.
        chosen = await classify_exam_type(ctx, data, media_type, request_id)
    return AdmittedUpload(data, media_type, chosen)


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.0f} MiB"


def _sized(data: bytes, max_bytes: int) -> bytes:
    """`data` (read up to max_bytes + 1), or 413 / 422 for a file too large or empty."""
    if len(data) > max_bytes:
        raise ApiError(413, f"The file is larger than the {_mib(max_bytes)} limit.")
    if not data:
        raise invalid_fields({"file": "The file is empty."})
    return data


async def _read_upload(upload: UploadFile, max_bytes: int) -> bytes:
    return _sized(await upload.read(max_bytes + 1), max_bytes)


def read_spooled_upload(upload: UploadFile, max_bytes: int) -> bytes:
    """The upload's body as Starlette spooled it, from a worker thread (blocking); 413 / 422 for a
    file too large or empty."""
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


def _timed_check_image(ctx: GatewayContext, data: bytes) -> Inspection:
    """check_image under the settings' limits, its CPU counted as the stage "check_upload". Blocking."""
    with ctx.metrics.stage_cpu.stage("check_upload"):
        return check_image(data, ctx.settings.image_limits())
