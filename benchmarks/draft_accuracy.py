"""Does JPEG draft decoding change what the shipped models say? Real validation images, each model.

    python -m benchmarks.draft_accuracy [--data ../shared/data] [--images 400] [--sides 1024 1800]

The model services decode JPEGs in the DCT domain at a reduced scale (Pillow draft mode) before the
resize to the model input. This compares the probabilities of each shipped model for the `val` rows
of its split.csv (never the test rows, never the sequestered hold-out) decoded three ways:

  full    - every pixel decoded, then resized: what training's preprocessing does;
  draft2x - draft mode to no less than twice the model input (the services' setting);
  draft1x - draft mode to no less than the model input (cheaper; measured and not taken).

The dataset images are small (224x224, 200x150), which draft mode leaves untouched, so each one is
also scaled up (bicubic) to `--sides` pixels on its long side and saved as a quality-90 JPEG: an
upload of the size a scanner or camera sends, with the content of a real validation image.
Prints one row per task, upload size and decoding: max and mean |delta p| over every class of every
image against `full` (or, for the yardsticks, against the stored file), and how many images change
their top label. Not a test; benchmarks/README.md has the results.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from services.core.imaging import read_image
from services.core.preprocessing import draft_size_for, to_model_input
from services.core.runtime import OnnxModel
from training.evaluate import records_from_split_csv
from training.paths import data_dir
from training.tasks import SPECS, load_split

BATCH = 32


def val_paths(task: str, root: Path, limit: int) -> list[Path]:
    """The task's validation images: load_split's `val` rows, checked against the shipped split.csv
    (the split the shipped model was trained with), evenly spaced down to `limit` (0 = all)."""
    spec = SPECS[task]
    shipped = sorted(str(r.path) for r in records_from_split_csv(spec.model_dir / "split.csv", root, "val"))
    computed = sorted(str(item.record.path) for item in load_split(task, root) if item.split == "val")
    if shipped != computed:
        raise SystemExit(f"{task}: load_split's val rows differ from {spec.model_dir / 'split.csv'}")
    paths = [Path(p) for p in shipped]
    if limit and len(paths) > limit:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]
    return paths


def upscaled_jpeg(path: Path, side: int) -> bytes:
    """The image at `path` scaled (bicubic) to `side` pixels on its long side, as a quality-90 JPEG."""
    with Image.open(path) as image:
        image.load()
        scale = side / max(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        buffer = io.BytesIO()
        image.resize(size, Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=90)
        return buffer.getvalue()


def resaved_jpeg(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        return buffer.getvalue()


def probabilities(model: OnnxModel, uploads: Sequence[bytes], draft: tuple[int, int] | None) -> np.ndarray:
    size = model.input_size
    rows = []
    for start in range(0, len(uploads), BATCH):
        batch = np.stack([
            to_model_input(read_image(data, None, draft_size=draft).image, size)
            for data in uploads[start:start + BATCH]
        ])
        rows.append(model.run(batch).probabilities)
    return np.concatenate(rows).astype(np.float64)


def compare(reference: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    delta = np.abs(other - reference)
    return {
        "max_abs_delta_p": float(delta.max()),
        "mean_abs_delta_p": float(delta.mean()),
        "argmax_flips": int((other.argmax(1) != reference.argmax(1)).sum()),
    }


def measure(task: str, root: Path, limit: int, sides: Sequence[int]) -> list[dict[str, Any]]:
    model = OnnxModel(SPECS[task])
    drafts = {"draft2x": draft_size_for(model.input_size), "draft1x": model.input_size}
    paths = val_paths(task, root, limit)
    stored = [p.read_bytes() for p in paths]
    as_stored = probabilities(model, stored, None)
    rows = []

    def row(upload: str, decoding: str, reference: np.ndarray, other: np.ndarray, against: str) -> None:
        rows.append({"task": task, "images": len(paths), "upload": upload, "decoding": decoding,
                     "against": against, **compare(reference, other)})
        print(json.dumps(rows[-1]), flush=True)

    # Yardsticks: how much p moves anyway when the same picture arrives re-saved as JPEG (quality 90,
    # as a phone or PACS export does) or at another resolution.
    row("as stored, re-saved at quality 90", "full", as_stored,
        probabilities(model, [resaved_jpeg(data) for data in stored], None), "as stored")
    for name, draft in drafts.items():
        row("as stored", name, as_stored, probabilities(model, stored, draft), "full")
    for side in sides:
        uploads = [upscaled_jpeg(p, side) for p in paths]
        full = probabilities(model, uploads, None)
        row(f"{side} px", "full", as_stored, full, "as stored")
        for name, draft in drafts.items():
            row(f"{side} px", name, full, probabilities(model, uploads, draft), "full")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help="dataset root (default: DRTECH_DATA_DIR or ../shared/data)")
    parser.add_argument("--tasks", nargs="+", choices=sorted(SPECS), default=["bone", "skin", "pneumonia"])
    parser.add_argument("--images", type=int, default=400, help="validation images per task (0 = all)")
    parser.add_argument("--sides", type=int, nargs="*", default=[1024, 1800],
                        help="long sides of the scaled-up uploads")
    args = parser.parse_args(argv)
    root = data_dir(args.data)
    if not root.is_dir():
        print(f"error: no dataset root at {root} (set --data or DRTECH_DATA_DIR)", file=sys.stderr)
        return 2
    rows = [row for task in args.tasks for row in measure(task, root, args.images, args.sides)]
    print("\n| task | images | upload | decoding | against | max abs delta p | mean abs delta p "
          "| top label changed |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['task']} | {row['images']} | {row['upload']} | {row['decoding']} | {row['against']} | "
              f"{row['max_abs_delta_p']:.4f} | {row['mean_abs_delta_p']:.5f} | {row['argmax_flips']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
