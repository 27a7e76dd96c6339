"""Images as PNGs a browser can show: stored uploads (a DICOM, or any upload scaled down to a
thumbnail) and previews, decoded with the model services' own code (services/core/imaging)."""

from __future__ import annotations

import io
from collections.abc import Callable

import anyio
from PIL import Image

from gateway.context import GatewayContext
from gateway.errors import ApiError
from services.core.errors import InvalidImage
from services.core.imaging import ImageLimits, Inspection, decode, inspect_image
from services.core.memory import release_after

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
