"""Image -> model input. The one preprocessing path: training and serving both call it.

The shipped models are MobileNetV2-based: RGB, 224x224, scaled to [-1, 1] (x/127.5 - 1).
Grayscale radiographs are replicated to three channels. The aspect ratio is not kept, matching
how the training data were resized (Kermany and knee images are square crops/resizes).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_model_input(image: Image.Image, size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """Return a float32 array of shape (height, width, 3) scaled to [-1, 1]."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    array = np.asarray(image, dtype=np.float32)
    return array / np.float32(127.5) - np.float32(1.0)


def batch(images: list[Image.Image], size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """Stack several images into one (n, height, width, 3) float32 batch."""
    return np.stack([to_model_input(image, size) for image in images])
