"""Where the read-only data and weights live: a flag wins, then an environment variable, then ../shared."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = PROJECT_ROOT / "training" / "cache"
MODEL_VERSION = "2026.11.1"
# A model version as cards, answers and file names carry it (e.g. 2026.11.2).
VERSION_PATTERN = r"[0-9A-Za-z][0-9A-Za-z.+-]{0,39}"


def data_dir(flag: str | os.PathLike[str] | None = None) -> Path:
    """The shared data root: `--data`, else DRTECH_DATA_DIR, else ../shared/data."""
    if flag:
        return Path(flag)
    return Path(os.environ.get("DRTECH_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))


def weights_dir(flag: str | os.PathLike[str] | None = None) -> Path:
    """The MobileNetV2 .npy folder: `--weights`, else DRTECH_WEIGHTS_DIR, else ../shared/weights/..."""
    if flag:
        return Path(flag)
    default = PROJECT_ROOT.parent / "shared" / "weights" / "mobilenet_v2_1.0_224_imagenet" / "weights"
    return Path(os.environ.get("DRTECH_WEIGHTS_DIR", default))
