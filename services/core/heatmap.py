"""Class activation map -> RGBA PNG overlay at the input image's size.

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


def normalise_cam(cam: np.ndarray) -> np.ndarray:
    """ReLU then scale to [0, 1], as Grad-CAM does; an all-negative map becomes all zeros."""
    positive = np.maximum(np.asarray(cam, dtype=np.float32), 0.0)
    peak = float(positive.max()) if positive.size else 0.0
    if not np.isfinite(peak) or peak <= 0.0:
        return np.zeros_like(positive)
    return positive / peak


def overlay_png(cam: np.ndarray, size: tuple[int, int]) -> bytes:
    """Encode one class's CAM (h, w) as an RGBA PNG of `size` (width, height).

    Colour runs blue (low) -> yellow -> red (high); alpha grows with the weight, so regions the
    model ignored stay transparent.
    """
    weights = normalise_cam(cam)
    # Bilinear upsampling in float, so the 7x7 grid becomes a smooth map, not blocks.
    upsampled = Image.fromarray(weights, mode="F").resize(size, Image.Resampling.BILINEAR)
    level = np.clip(np.asarray(upsampled), 0.0, 1.0)
    gray = Image.fromarray(np.rint(level * 255).astype(np.uint8), mode="L")
    coloured = ImageOps.colorize(gray, black="#0000ff", mid="#ffff00", white="#ff0000")
    alpha = Image.fromarray(np.rint(level * MAX_ALPHA * 255).astype(np.uint8), mode="L")
    coloured.putalpha(alpha)
    buffer = io.BytesIO()
    coloured.save(buffer, format="PNG", optimize=False, compress_level=3)
    return buffer.getvalue()
