"""JPEG and PNG through Pillow: open an upload (header only, after its structure walk), then decode
the image that open returned."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from services.core.errors import InvalidImage
from services.core.imaging import jpeg, png
from services.core.imaging.levels import scale_to_uint8
from services.core.imaging.limits import ImageLimits
from services.core.imaging.sniffing import JPEG

_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that displays it upright (the table ImageOps.exif_transpose
# uses; called directly because exif_transpose also rewrites the EXIF block, which fails on junk).
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _format_name(media_type: str) -> str:
    return "JPEG" if media_type == JPEG else "PNG"


def open_raster(data: bytes, media_type: str, limits: ImageLimits) -> tuple[Image.Image, bool]:
    """Open (header only, pixels not decoded yet) a JPEG or PNG; returns it and whether it decodes
    whole: a JPEG that libjpeg buffers in full (see Inspection.multi_scan; a PNG: False)."""
    expected_format = _format_name(media_type)
    scans, first_components = 1, 0
    if media_type == JPEG:
        scans, first_components = jpeg.check_structure(data)
    else:
        png.check_chunks(data)
    try:
        with warnings.catch_warnings():
            # Our own pixel limit is checked by the caller; Pillow's global bomb check must not decide first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[expected_format])
    except Image.DecompressionBombError:
        raise InvalidImage(
            f"the image declares too many pixels; the largest accepted is {limits.max_pixels} pixels in total"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InvalidImage(
            f"the file starts like a {expected_format} image but its header cannot be read"
        ) from None
    # libjpeg keeps every coefficient of the image when the frame is progressive or its first scan
    # leaves components out, however many scans follow: a progressive file cut after its first scan
    # took as much memory as the whole one (401 MB for 8000x8000), measured.
    progressive = bool(image.info.get("progressive") or image.info.get("progression"))
    partial_first_scan = 0 < first_components < len(image.getbands())
    decodes_whole = media_type == JPEG and (scans > 1 or progressive or partial_first_scan)
    return image, decodes_whole


def decode_raster(
    image: Image.Image, media_type: str, limits: ImageLimits, draft_size: tuple[int, int] | None
) -> tuple[Image.Image, tuple[int, int]]:
    """The pixels of an image open_raster returned (and whose size was checked), "RGB" or "L", and
    its original size as displayed (after EXIF rotation)."""
    original_size = image.size
    if media_type == JPEG and draft_size is not None:
        # DCT-domain downscaling by 1/2, 1/4 or 1/8, never below draft_size.
        image.draft(image.mode if image.mode in ("RGB", "L") else None, draft_size)
    try:
        image.load()
    except Image.DecompressionBombError:
        raise InvalidImage(
            f"the image declares too many pixels; the largest accepted is {limits.max_pixels} pixels in total"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        name = _format_name(media_type)
        raise InvalidImage(f"the {name} image is truncated or corrupt ({error})") from None
    # Camera photos (skin lesions) may be stored sideways with an EXIF orientation tag; turn them
    # the way a browser displays them, so the heatmap lines up with what the user sees.
    try:
        orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block must not cost the image: show it as stored
        orientation = 1
    if orientation in _EXIF_TRANSPOSE:
        image = image.transpose(_EXIF_TRANSPOSE[orientation])
        if orientation in (5, 6, 7, 8):
            original_size = original_size[::-1]
    return _to_rgb_or_l(image), original_size


def _to_rgb_or_l(image: Image.Image) -> Image.Image:
    if image.mode in ("RGB", "L"):
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale PNG (common for radiographs): stretch to 8 bits rather than clip.
        array = np.asarray(image)
        if array.dtype.kind == "i" and array.min() >= 0 and array.max() <= 65535:
            array = array.astype(np.uint16)   # Pillow's "I" mode: int32 holding 16-bit values
        return Image.fromarray(scale_to_uint8(array, float(array.min()), float(array.max())), mode="L")
    if image.mode in ("LA", "La"):
        return image.convert("L")
    # P, RGBA, CMYK, YCbCr, 1: let Pillow convert; transparency is dropped.
    return image.convert("RGB")
