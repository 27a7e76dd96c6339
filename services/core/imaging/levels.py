"""Pixel values of any range -> 8-bit display levels (16-bit PNGs, DICOM)."""

from __future__ import annotations

import numpy as np


def scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map low..high linearly onto 0..255. One float32 working copy, changed in place: a 64 M pixel
    image must fit a model pod's memory (float64 with temporaries cost ~32 bytes per pixel)."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    if values.dtype == np.uint8 and low == 0 and high == 255:
        return values
    if values.dtype in (np.uint8, np.uint16) and values.ndim >= 2:
        # Integer pixels: scale the 256 or 65536 possible values once and look each pixel up.
        levels = np.arange(np.iinfo(values.dtype).max + 1, dtype=np.float32)
        return scale_to_uint8(levels, low, high)[values]
    scaled = values.astype(np.float32)
    scaled -= np.float32(low)
    scaled *= np.float32(255.0 / (high - low))
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)
