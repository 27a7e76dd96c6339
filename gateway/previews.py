"""Previews: a PNG of an image the user is about to upload, so a DICOM can be seen before diagnosing.

Browsers cannot show DICOM, so the web UI sends the chosen file here first; the gateway decodes it
with the same code the model services use (services/core/imaging/: rescale, VOI LUT/window,
MONOCHROME1 inverted, first frame) and answers a downscaled PNG. Nothing is stored or logged: the
file's header (patient name, IDs) never leaves this function.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Response, UploadFile

from gateway.accounts import CallerDep
from gateway.context import ContextDep
from gateway.admission import check_image, read_spooled_upload
from gateway.rendering import rendered_png
from services.core.imaging import Inspection

router = APIRouter(prefix="/api/v1")

PREVIEW_SIDE = 512


@router.post("/previews", response_class=Response)
async def create_preview(
    caller: CallerDep,
    ctx: ContextDep,
    file: Annotated[UploadFile, File(description="JPEG, PNG or DICOM image")],
) -> Response:
    """A PNG preview (at most 512 px a side) of an upload; 415/422 as for a diagnosis. Nothing is kept."""
    max_bytes, limits = ctx.settings.max_upload_bytes, ctx.settings.image_limits()

    def load() -> Inspection:
        # Read (from the spooled body) only when the render's turn comes: a preview waiting for the
        # render slot holds no upload in memory, and no upload slot that diagnoses need. The render
        # decodes from this inspection, without opening the file again.
        return check_image(read_spooled_upload(file, max_bytes), limits)

    preview = await rendered_png(ctx, load, PREVIEW_SIDE)
    return Response(preview, media_type="image/png", headers={"Cache-Control": "no-store"})
