"""Pack what a training run reads into one uncompressed zip, to carry it to another machine.

    python -m training.experiments.pack --split-csv services/skin/model/split.csv [--weights]
        --out .dev/skin.zip [--data DIR] [--splits train val] [--max-mib 50] [--part K/N]

Holds the images of the chosen rows of each `--split-csv` (default: train and val, which is all
`training.finetune --split-csv` reads) under their paths relative to the data root, and with
`--weights` the MobileNetV2 `.npy` folder as `weights/`. On the other machine:
`python -m zipfile -e FILE DIR`, then `training.finetune --data DIR --split-csv ... --weights DIR/weights`.

Why a zip: a lent GPU machine takes 64 MiB with a call, apparently counted on disk, where
thousands of small JPEGs take about a quarter more than their bytes; one stored (uncompressed:
JPEG does not compress) zip costs its bytes. `--max-mib` refuses a pack that would not fit. Write it to a git-ignored folder:
the data and weights are never committed.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

from training.paths import data_dir, weights_dir
from training.splits import read_split_csv


def files_to_pack(split_csvs: Sequence[Path], root: Path, splits: Sequence[str],
                  weights: Path | None) -> dict[str, Path]:
    """{name in the zip: file}: each chosen row's image, then the weights folder's files."""
    files: dict[str, Path] = {}
    for csv_path in split_csvs:
        for item in read_split_csv(csv_path, root):
            if item.split in splits:
                files[item.record.path.relative_to(root).as_posix()] = item.record.path
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images of the split are not under {root}, e.g. {missing[0]}")
    if weights is not None:
        npy = sorted(weights.glob("*.npy"))
        if not npy:
            raise FileNotFoundError(f"no .npy weights in {weights}")
        files.update({f"weights/{path.name}": path for path in npy})
    return files


def part_of(files: dict[str, Path], part: int, parts: int) -> dict[str, Path]:
    """Every `parts`-th file from the `part`-th (1-based): N packs of about as many files hold them all."""
    if not 1 <= part <= parts:
        raise ValueError(f"part {part}/{parts}: expected 1 <= part <= parts")
    return {name: path for index, (name, path) in enumerate(sorted(files.items())) if index % parts == part - 1}


def write_pack(files: dict[str, Path], out: Path, max_bytes: int | None = None) -> int:
    """Writes the stored zip and returns its size; refuses (writing nothing) one over `max_bytes`."""
    estimate = sum(path.stat().st_size + 100 + 2 * len(name) for name, path in files.items())
    if max_bytes is not None and estimate > max_bytes:
        raise ValueError(f"the pack would take about {estimate / 2**20:.1f} MiB, over the "
                         f"{max_bytes / 2**20:.1f} MiB allowed: pack fewer rows or split it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, path in files.items():
            archive.write(path, name)
    return out.stat().st_size


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.experiments.pack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--split-csv", type=Path, action="append", required=True,
                        help="a split.csv whose rows to pack (repeat for several tasks)")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], choices=("train", "val", "test"))
    parser.add_argument("--data", help="dataset root (default: DRTECH_DATA_DIR or ../shared/data)")
    parser.add_argument("--weights", action="store_true", help="add the MobileNetV2 .npy folder as weights/")
    parser.add_argument("--weights-dir", help="that folder (default: DRTECH_WEIGHTS_DIR or ../shared/weights/...)")
    parser.add_argument("--max-mib", type=float, help="refuse a pack larger than this")
    parser.add_argument("--part", default="1/1", help="K/N: the K-th of N packs that together hold everything "
                        "(unzipped into one folder, e.g. one per call on a warm machine)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    root = data_dir(args.data)
    try:
        part, parts = (int(value) for value in args.part.split("/"))
        files = part_of(files_to_pack(args.split_csv, root, args.splits,
                                      weights_dir(args.weights_dir) if args.weights else None), part, parts)
        size = write_pack(files, args.out, int(args.max_mib * 2**20) if args.max_mib is not None else None)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.out}: {len(files)} files, {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    from training.cli import run

    raise SystemExit(run(main))
