"""Random rotation, zoom and shift of a training batch in one resampling, batched on every backend.

Keras' RandomRotation, RandomZoom and RandomTranslation each resample the batch through
`keras.ops.image.affine_transform`. On the PyTorch backend that function loops over the images
in Python, and its `map_coordinates` issues some sixty tensor operations per image, so three
layers cost tens of thousands of small GPU launches per batch of 128, whatever the network costs
(measured on a lent H100: training/experiments/FINDINGS.md). `RandomAffine`
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


@keras.saving.register_keras_serializable(package="drtech")
class RandomAcquisition(keras.layers.Layer):
    """Per image, in training only: what differs between two X-ray acquisitions of the same chest.

    On [-1, 1] images: a gamma in [1/`gamma`, `gamma`], a contrast factor in 1 +- `contrast` about
    the image's mean, a brightness offset of up to +-`brightness` (of the 0..1 range), then, each with
    probability 1/2, a mix towards a blurred copy (Gaussian, sigma 1.2 px) and towards a copy at
    `low_resolution` of the size (resampled back up), by a random amount, and Gaussian noise of up to
    `noise` standard deviation, the same in every channel (a grey radiograph stays grey).
    A model trained on one site's exposure and processing otherwise learns them as evidence: in the
    Kermany train folder the pneumonia images have a lower contrast than the normal ones."""

    def __init__(self, gamma: float = 1.5, contrast: float = 0.3, brightness: float = 0.1, noise: float = 0.04,
                 low_resolution: float = 0.4, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.gamma, self.contrast, self.brightness = gamma, contrast, brightness
        self.noise, self.low_resolution, self.seed = noise, low_resolution, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _per_image(self, batch, low: float, high: float):
        return keras.random.uniform((batch, 1, 1, 1), low, high, seed=self.seed_generator)

    def _sometimes(self, batch):
        """A mixing weight per image: 0 for half of them, uniform in 0..1 for the others."""
        coin = ops.cast(self._per_image(batch, 0.0, 1.0) < 0.5, "float32")
        return coin * self._per_image(batch, 0.0, 1.0)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        batch, height, width, channels = ops.shape(inputs)[0], inputs.shape[1], inputs.shape[2], inputs.shape[3]
        x = ops.clip((inputs + 1.0) / 2.0, 0.0, 1.0)
        log_gamma = math.log(self.gamma)
        x = ops.power(x + 1e-6, ops.exp(self._per_image(batch, -log_gamma, log_gamma)))
        mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
        x = (x - mean) * self._per_image(batch, 1 - self.contrast, 1 + self.contrast) + mean
        x = x + self._per_image(batch, -self.brightness, self.brightness)
        x = x + self._sometimes(batch) * (_gaussian_blur(x, channels) - x)
        small = (max(8, round(height * self.low_resolution)), max(8, round(width * self.low_resolution)))
        coarse = ops.image.resize(ops.image.resize(x, small, interpolation="bilinear", antialias=True),
                                  (height, width), interpolation="bilinear")
        x = x + self._sometimes(batch) * (coarse - x)
        sigma = self._per_image(batch, 0.0, self.noise) * ops.cast(self._per_image(batch, 0.0, 1.0) < 0.5, "float32")
        x = x + sigma * keras.random.normal((batch, height, width, 1), seed=self.seed_generator)
        return ops.clip(x, 0.0, 1.0) * 2.0 - 1.0

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "gamma": self.gamma, "contrast": self.contrast,
                "brightness": self.brightness, "noise": self.noise, "low_resolution": self.low_resolution,
                "seed": self.seed}


def _gaussian_blur(images, channels: int, sigma: float = 1.2, radius: int = 3):
    """A separable Gaussian blur of each channel (reflect-free 'same' padding: edges darken slightly,
    which a film's borders do too)."""
    taps = [math.exp(-(i * i) / (2 * sigma * sigma)) for i in range(-radius, radius + 1)]
    total = sum(taps)
    kernel = ops.convert_to_tensor([t / total for t in taps], dtype=images.dtype)
    size = 2 * radius + 1
    horizontal = ops.tile(ops.reshape(kernel, (1, size, 1, 1)), (1, 1, channels, 1))
    vertical = ops.tile(ops.reshape(kernel, (size, 1, 1, 1)), (1, 1, channels, 1))
    blurred = ops.depthwise_conv(images, horizontal, strides=1, padding="same")
    return ops.depthwise_conv(blurred, vertical, strides=1, padding="same")
