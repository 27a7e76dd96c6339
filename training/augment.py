"""Random rotation, zoom and shift of a training batch in one resampling, batched on every backend.

Keras' RandomRotation, RandomZoom and RandomTranslation each resample the batch through
`keras.ops.image.affine_transform`. On the PyTorch backend that function loops over the images
in Python, and its `map_coordinates` issues some sixty tensor operations per image, so three
layers cost tens of thousands of small GPU launches per batch of 128: on the lent H100 a
training step took ~700 ms (~185 images/s) however fast the network itself was. `RandomAffine`
composes the three into one transform per image and samples the whole batch with a fixed number
of `keras.ops` calls (four gathers of the flattened batch), so its cost does not grow with the
number of images in launches. `affine_sample` reproduces `affine_transform(..., "bilinear",
fill_mode="reflect")`; the tests compare the two.
"""

from __future__ import annotations

import math

import keras
from keras import ops


def _reflect(index, size: int):
    """Integer indices folded into 0..size-1 as 'reflect' does: (d c b a | a b c d | d c b a)."""
    period = 2 * size
    folded = ops.mod(index, period)     # 0..2*size-1 (mod follows the divisor's sign)
    return ops.where(folded >= size, period - 1 - folded, folded)


def affine_sample(images, transforms):
    """Bilinear, reflect-filled resampling of `images` (B, H, W, C float) by per-image affine
    `transforms` (B, 6) in Keras' convention: output pixel (x, y) reads input point
    (a0*x + a1*y + a2, b0*x + b1*y + b2), x the column and y the row."""
    batch, height, width, channels = ops.shape(images)
    dtype = images.dtype
    rows = ops.cast(ops.arange(height), dtype)[None, :, None]
    cols = ops.cast(ops.arange(width), dtype)[None, None, :]
    t = ops.cast(transforms, dtype)
    a0, a1, a2, b0, b1, b2 = (t[:, i][:, None, None] for i in range(6))
    x = a0 * cols + a1 * rows + a2          # (B, H, W) source column
    y = b0 * cols + b1 * rows + b2          # (B, H, W) source row

    x0, y0 = ops.floor(x), ops.floor(y)
    wx, wy = x - x0, y - y0
    x0, y0 = ops.cast(x0, "int32"), ops.cast(y0, "int32")
    flat = ops.reshape(images, (-1, channels))
    base = ops.reshape(ops.arange(batch, dtype="int32") * (height * width), (-1, 1, 1))

    def corner(dy: int, dx: int):
        index = base + _reflect(y0 + dy, height) * width + _reflect(x0 + dx, width)
        return ops.reshape(ops.take(flat, ops.reshape(index, (-1,)), axis=0), (-1, height, width, channels))

    wx, wy = wx[..., None], wy[..., None]
    top = corner(0, 0) * (1 - wx) + corner(0, 1) * wx
    bottom = corner(1, 0) * (1 - wx) + corner(1, 1) * wx
    return top * (1 - wy) + bottom * wy


@keras.saving.register_keras_serializable(package="drtech")
class RandomAffine(keras.layers.Layer):
    """Per image, in training only: a rotation by up to +-`rotation` of a full turn, a zoom by a
    factor in 1 +- `zoom` (the same along both axes) and a shift by up to +-`shift` of the height
    and width, about the image centre, composed and sampled once (bilinear, reflect fill)."""

    def __init__(self, rotation: float = 0.0, zoom: float = 0.0, shift: float = 0.0,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rotation, self.zoom, self.shift, self.seed = rotation, zoom, shift, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def transforms(self, batch: int, height: int, width: int):
        """(batch, 6) random output->input transforms (Keras' affine convention)."""
        def uniform(bound: float):
            return keras.random.uniform((batch,), -bound, bound, seed=self.seed_generator)

        angle = uniform(self.rotation * 2 * math.pi)
        scale = 1.0 + uniform(self.zoom)
        shift_x, shift_y = uniform(self.shift) * width, uniform(self.shift) * height
        cos, sin = ops.cos(angle) * scale, ops.sin(angle) * scale
        cx, cy = (width - 1) / 2, (height - 1) / 2
        # input = centre + scale * R(angle) (output - centre) - shift
        return ops.stack([cos, -sin, cx - cos * cx + sin * cy - shift_x,
                          sin, cos, cy - sin * cx - cos * cy - shift_y], axis=1)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        batch, height, width = ops.shape(inputs)[0], inputs.shape[1], inputs.shape[2]
        return affine_sample(inputs, self.transforms(batch, height, width))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "rotation": self.rotation, "zoom": self.zoom, "shift": self.shift,
                "seed": self.seed}
