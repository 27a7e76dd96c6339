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

from services.core.errors import InvalidImage
from services.core.imaging import ImageLimits, read_image
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


# The flips of an image, as the axes of an (height, width, channels) array each reverses.
FLIP_AXES: dict[str, tuple[int, ...]] = {"none": (), "horizontal": (1,), "vertical": (0,), "both": (0, 1)}
# The 8 symmetric views of a square model input: an optional transposition (rows <-> columns; with
# a flip, a quarter turn) followed by a flip. Training augmentation (train.py --augment) and
# test-time augmentation (tta.py) both name views this way.
VIEWS: tuple[str, ...] = ("none", "horizontal", "vertical", "both",
                          "transposed", "transposed+horizontal", "transposed+vertical", "transposed+both")
# NHWC: swap height and width.
TRANSPOSE = (0, 2, 1, 3)


def flipped(array: np.ndarray, flip: str, batch: bool = False) -> np.ndarray:
    """`array` (one HWC image, or an NHWC batch with `batch`) with `flip`'s axes reversed."""
    axes = tuple(axis + batch for axis in FLIP_AXES[flip])
    return np.flip(array, axes) if axes else array


def view_parts(view: str) -> tuple[bool, str]:
    """(transposed, flip) of a view name such as "transposed+vertical"."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; views are {list(VIEWS)}")
    transposed = view.startswith("transposed")
    flip = (view.partition("+")[2] or "none") if transposed else view
    return transposed, flip


def apply_view(batch: np.ndarray, view: str) -> np.ndarray:
    """The NHWC `batch` as the model sees it in `view`."""
    transposed, flip = view_parts(view)
    return flipped(batch.transpose(TRANSPOSE) if transposed else batch, flip, batch=True)


def undo_view(batch: np.ndarray, view: str) -> np.ndarray:
    """A map computed on `view` (NHWC, e.g. a CAM) in the original image's orientation."""
    transposed, flip = view_parts(view)
    back = flipped(batch, flip, batch=True)
    return back.transpose(TRANSPOSE) if transposed else back


# Training takes any image size a dataset has; serving's other limits apply.
TRAINING_LIMITS = ImageLimits(min_side=1)


def decoded(path: Path) -> Image.Image:
    """The image at `path` decoded as serving decodes an upload (services.core.imaging: EXIF
    orientation, 16-bit stretched to 8 bits, DICOM), but at full size (no JPEG draft decoding), so
    the datasets' plain 8-bit files give exactly Pillow's own pixels."""
    try:
        return read_image(Path(path).read_bytes(), None, TRAINING_LIMITS).image
    except InvalidImage as error:   # a ValueError: name the file it is about
        raise InvalidImage(f"{path}: {error}") from None


def load_image(path: Path, view: str = "none", size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """The image at `path` as the model input at `size` (width, height), in `view` (default: as is)."""
    with decoded(path) as image:
        return np.ascontiguousarray(apply_view(to_model_input(image, size)[None], view)[0])


def _cache_key(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256("\n".join(str(p) for p in paths).encode()).hexdigest()
    return digest[:16]


def _weights_key(backbone) -> str:
    digest = hashlib.sha256()
    for weight in backbone.weights:
        digest.update(np.asarray(weight).tobytes())
    return digest.hexdigest()[:12]


def extract(backbone, paths: Sequence[Path], name: str, cache_dir: Path = CACHE_DIR,
            view: str = "none", mid_layer: str | None = MID_LAYER) -> Features:
    """Features for `paths` in order (of the images in `view`: see VIEWS); reads the cache if the
    same path list was extracted before. `mid` holds the output of `mid_layer` (None: no mid
    activations, an (N, 0) array, for a backbone that is not fine-tuned from a cached layer)."""
    import keras
    import tensorflow as tf

    _, height, width, _ = backbone.input_shape
    size = (width, height)
    suffix = ("" if view == "none" else f"-view_{view}") + ("" if mid_layer == MID_LAYER else f"-{mid_layer}")
    # The same weights at another input size give other features.
    suffix += "" if size == (224, 224) else f"-{width}x{height}"
    # The backbone's own weights are part of the key: another --weights folder (or a fine-tuned
    # backbone) must never be handed features another backbone computed.
    cache = cache_dir / f"{name}-{_cache_key(paths)}-{_weights_key(backbone)}{suffix}.npz"
    if cache.is_file():
        with np.load(cache) as stored:
            seconds = float(stored["seconds"]) if "seconds" in stored.files else None
            return Features(stored["pooled"], stored["mid"], seconds)
    probe = keras.Model(backbone.input, [backbone.get_layer(mid_layer).output if mid_layer else backbone.output,
                                         backbone.output])
    run = tf.function(lambda batch: probe(batch, training=False))
    pooled, mid = [], []
    started = time.monotonic()
    for start in range(0, len(paths), BATCH):
        batch = np.stack([load_image(p, view, size) for p in paths[start:start + BATCH]])
        middle, last = run(tf.constant(batch))
        mid.append(middle.numpy().astype(np.float16) if mid_layer else np.zeros((len(batch), 0), np.float16))
        pooled.append(last.numpy().mean(axis=(1, 2)))
        done = start + len(batch)
        if (start // BATCH) % 10 == 0 or done == len(paths):
            log.info("%s: %d/%d images, %.1f img/s", name, done, len(paths), done / (time.monotonic() - started))
    features = Features(np.concatenate(pooled), np.concatenate(mid), time.monotonic() - started)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, pooled=features.pooled, mid=features.mid, seconds=features.seconds)
    return features
