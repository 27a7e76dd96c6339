"""Frozen-backbone features, computed once per image and cached under training/cache/ (git-ignored).

Each image goes through `services.core.preprocessing.to_model_input`, the same code serving runs.
Two tensors are kept per image: the pooled last feature map (1280, what the frozen head trains on)
and an intermediate activation (float16; block 13's 7x7x160 output by default, or an earlier one)
so the top MobileNetV2 blocks can be fine-tuned without re-running the whole backbone.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from services.core.preprocessing import to_model_input
from training.paths import CACHE_DIR

log = logging.getLogger(__name__)

MID_LAYER = "block_13_project_BN"   # 7x7x160: the input of block 14 (default)
BATCH = 64


@dataclass
class Features:
    pooled: np.ndarray      # (N, 1280) float32: global average pool of the backbone output
    mid: np.ndarray         # float16 intermediate activation, e.g. (N, 7, 7, 160) for block 13
    seconds: float | None   # wall time the extraction took when it ran (kept in the cache)


# The flips of an image, as the axes of an (height, width, channels) array each reverses; used to
# augment training images (after the shared preprocessing) and for test-time augmentation (tta.py).
FLIP_AXES: dict[str, tuple[int, ...]] = {"none": (), "horizontal": (1,), "vertical": (0,), "both": (0, 1)}


def flipped(array: np.ndarray, flip: str, batch: bool = False) -> np.ndarray:
    """`array` (one HWC image, or an NHWC batch with `batch`) with `flip`'s axes reversed."""
    axes = tuple(axis + batch for axis in FLIP_AXES[flip])
    return np.flip(array, axes) if axes else array


def load_image(path: Path, flip: str = "none", size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """The image at `path` as the model input at `size` (width, height), optionally flipped."""
    with Image.open(path) as image:
        image.load()
        return np.ascontiguousarray(flipped(to_model_input(image, size), flip))


def _cache_key(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256("\n".join(str(p) for p in paths).encode()).hexdigest()
    return digest[:16]


def extract(backbone, paths: Sequence[Path], name: str, cache_dir: Path = CACHE_DIR,
            flip: str = "none", mid_layer: str = MID_LAYER) -> Features:
    """Features for `paths` in order (optionally of flipped images); reads the cache if the same
    path list was extracted before. `mid` holds the output of `mid_layer`."""
    import keras
    import tensorflow as tf

    suffix = ("" if flip == "none" else f"-flip_{flip}") + ("" if mid_layer == MID_LAYER else f"-{mid_layer}")
    cache = cache_dir / f"{name}-{_cache_key(paths)}{suffix}.npz"
    if cache.is_file():
        with np.load(cache) as stored:
            seconds = float(stored["seconds"]) if "seconds" in stored.files else None
            return Features(stored["pooled"], stored["mid"], seconds)
    probe = keras.Model(backbone.input, [backbone.get_layer(mid_layer).output, backbone.output])
    run = tf.function(lambda batch: probe(batch, training=False))
    pooled, mid = [], []
    started = time.monotonic()
    for start in range(0, len(paths), BATCH):
        batch = np.stack([load_image(p, flip) for p in paths[start:start + BATCH]])
        middle, last = run(tf.constant(batch))
        mid.append(middle.numpy().astype(np.float16))
        pooled.append(last.numpy().mean(axis=(1, 2)))
        done = start + len(batch)
        if (start // BATCH) % 10 == 0 or done == len(paths):
            log.info("%s: %d/%d images, %.1f img/s", name, done, len(paths), done / (time.monotonic() - started))
    features = Features(np.concatenate(pooled), np.concatenate(mid), time.monotonic() - started)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, pooled=features.pooled, mid=features.mid, seconds=features.seconds)
    return features
