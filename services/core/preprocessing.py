"""Image -> model input. The one preprocessing path: training and serving both call it.

Every model takes RGB scaled to [-1, 1] (x/127.5 - 1) at its own input size: `size` is the model
file's input (services.core.runtime.ModelRuntime.input_size; 224x224 for the MobileNetV2 default,
e.g. 150x150 for the original pneumonia CNN, which converts to its own range inside the model).
Grayscale radiographs are replicated to three channels. The aspect ratio is not kept, matching
how the training data were resized (Kermany and knee images are square crops/resizes).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def draft_size_for(input_size: tuple[int, int]) -> tuple[int, int]:
    """How small a JPEG may be decoded (Pillow draft mode, DCT scaling by 1/2, 1/4 or 1/8) for a
    model of `input_size`: no less than twice the input on each side.

    Decoding down to the input size itself would save ~1.6 ms more per 1024x1024 upload, but it
    moves the models' probabilities several times more than the resize from twice the input does
    (bone: 29 of 400 validation images change their top label at 1800 px, against 3);
    `python -m benchmarks.draft_accuracy` measures it, benchmarks/README.md has the figures.
    """
    width, height = input_size
    return 2 * width, 2 * height


def to_model_input(image: Image.Image, size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """Return a float32 array of shape (height, width, 3) scaled to [-1, 1]."""
    return scale(resized_rgb(image, size))


def resized_rgb(image: Image.Image, size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """The uint8 (height, width, 3) RGB pixels the model sees, before scaling.

    Training keeps whole datasets in memory in this form (4x smaller than float32); `scale` of it
    is exactly `to_model_input`.
    """
    if image.mode == "L" and image.size != size:
        # Grayscale: resize the one channel, then replicate it. The same pixels as converting first
        # (replication commutes with resampling) for a third of the resampling work: ~1 ms less per
        # radiograph decoded at 512x512.
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(image, dtype=np.uint8)


def scale(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [-1, 1] (x/127.5 - 1), the models' input range."""
    # One new array instead of three (cast, divide, subtract); the same float32 values.
    scaled = np.divide(pixels, np.float32(127.5), dtype=np.float32)
    scaled -= np.float32(1.0)
    return scaled


def batch(images: list[Image.Image], size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """Stack several images into one (n, height, width, 3) float32 batch."""
    return np.stack([to_model_input(image, size) for image in images])
