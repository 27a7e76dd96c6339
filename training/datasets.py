"""Readers for each dataset's own published layout -> records (path, label, group).

The group is the unit that must never straddle splits (patient or lesion), so that the
held-out figures are not inflated by near-duplicate images of one patient or lesion.
Readers only list files; images are decoded later by the shared preprocessing.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path

KERMANY_LABELS = ("NORMAL", "PNEUMONIA")
HAM10000_LABELS = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
KL_GRADES = ("0", "1", "2", "3", "4")
MURA_LABELS = ("NORMAL", "ABNORMAL")

_IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
_KERMANY_PATIENT = re.compile(r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)[-_]")
_KNEE_PATIENT = re.compile(r"^(\d+)[LR]?\.(jpe?g|png)$", re.IGNORECASE)


log = logging.getLogger("training.datasets")


class DatasetLayoutError(ValueError):
    """The folder is not in the dataset's published layout (missing file/folder, unknown label)."""


@dataclass(frozen=True)
class Record:
    path: Path      # absolute path of one image
    label: str      # the dataset's own label (Kermany class, HAM10000 dx, KL grade "0".."4", MURA class)
    group: str      # patient or lesion id: never split across train/val/test


def _images_in(folder: Path) -> list[Path]:
    # Hidden files are no images: macOS tar and Finder copies carry an AppleDouble `._<name>.jpeg`
    # beside each image, which has an image suffix but no patient id.
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _IMAGE_SUFFIXES)


def _label_folders(split_dir: Path) -> list[str]:
    """The folder names in `split_dir`, hidden ones (.ipynb_checkpoints, ...) left out."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetLayoutError(f"{what}: folder not found: {path}")
    return path


def kermany_patient_id(file_name: str) -> str:
    """Patient id from a Kermany file name: personNNN_..., IM-XXXX-..., NORMAL2-IM-XXXX-..."""
    match = _KERMANY_PATIENT.match(file_name)
    if match is None:
        raise DatasetLayoutError(f"Kermany file name without a patient id: {file_name!r}")
    return match.group(1)


def read_kermany(root: Path, split: str = "train") -> list[Record]:
    """Kermany chest X-rays: `<root>/chest_xray/<split>/{NORMAL,PNEUMONIA}/*.jpeg` (root may be chest_xray/)."""
    root = Path(root)
    base = root if root.name == "chest_xray" else root / "chest_xray"
    split_dir = _require_dir(base / split, f"Kermany '{split}' split")
    unknown = [name for name in _label_folders(split_dir) if name not in KERMANY_LABELS]
    if unknown:
        raise DatasetLayoutError(f"unknown Kermany label folder(s) {unknown} in {split_dir}; expected {KERMANY_LABELS}")
    records = []
    for label in KERMANY_LABELS:
        folder = _require_dir(split_dir / label, f"Kermany label {label}")
        records += [Record(p, label, kermany_patient_id(p.name)) for p in _images_in(folder)]
    if not records:
        raise DatasetLayoutError(f"no images under {split_dir}")
    return records


def ham10000_metadata(root: Path) -> Path:
    """`HAM10000_metadata.csv` in `root`, or in its `ham10000/` child; a layout error if in neither."""
    root = Path(root)
    if not (root / "HAM10000_metadata.csv").is_file() and (root / "ham10000").is_dir():
        root = root / "ham10000"
    metadata = root / "HAM10000_metadata.csv"
    if not metadata.is_file():
        raise DatasetLayoutError(f"HAM10000 metadata file not found: {metadata}")
    return metadata


def read_ham10000(root: Path, listed_only: bool = False) -> list[Record]:
    """HAM10000: `HAM10000_metadata.csv` + images in `HAM10000_images/` or `HAM10000_images_part_{1,2}/`.

    `root` is the folder holding the CSV, or its parent with a `ham10000/` child. Group = lesion_id.
    Every row's image must be there (a missing half of the release is a layout error), unless
    `listed_only`: then rows without an image are left out, as when a held-out part of the lesions
    comes with the release's whole metadata file (training.evaluate).
    """
    metadata = ham10000_metadata(root)
    root = metadata.parent
    image_dirs = [d for d in (root / "HAM10000_images", root / "HAM10000_images_part_1",
                              root / "HAM10000_images_part_2") if d.is_dir()]
    if not image_dirs:
        raise DatasetLayoutError(
            f"no HAM10000 image folder in {root}: expected HAM10000_images/ or HAM10000_images_part_1/ and _2/"
        )
    by_id = {p.stem: p for d in image_dirs for p in _images_in(d)}
    records = []
    listed: set[str] = set()
    absent = 0
    # utf-8-sig: a CSV saved "with BOM" (Excel) would otherwise name its first column "\ufefflesion_id".
    with metadata.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing_columns = {"lesion_id", "image_id", "dx"} - set(reader.fieldnames or ())
        if missing_columns:
            raise DatasetLayoutError(f"{metadata} lacks column(s) {sorted(missing_columns)}")
        for line, row in enumerate(reader, start=2):
            if row["dx"] not in HAM10000_LABELS:
                raise DatasetLayoutError(f"unknown HAM10000 dx {row['dx']!r} for {row['image_id']} in {metadata}")
            # One image in two rows could land in two splits; a blank lesion would pool unrelated images.
            if row["image_id"] in listed:
                raise DatasetLayoutError(f"{metadata}:{line}: image {row['image_id']} is listed twice")
            if not (row["lesion_id"] or "").strip():
                raise DatasetLayoutError(f"{metadata}:{line}: image {row['image_id']} has no lesion_id")
            listed.add(row["image_id"])
            path = by_id.get(row["image_id"])
            if path is None and listed_only:
                absent += 1
                continue
            if path is None:
                halves = [root / f"HAM10000_images_part_{n}" for n in (1, 2)]
                missing_half = [str(d) for d in halves if not d.is_dir()]
                hint = (f" (the release's other half, {missing_half[0]}, is missing)"
                        if len(missing_half) == 1 else "")
                raise DatasetLayoutError(
                    f"image {row['image_id']} listed in {metadata} not found in {image_dirs}{hint}")
            records.append(Record(path, row["dx"], row["lesion_id"]))
    if not records:
        raise DatasetLayoutError(f"{metadata} lists no images" if not listed_only
                                 else f"none of the images {metadata} lists is in {image_dirs}")
    if absent:
        log.warning("%d of the %d images %s lists are not in %s: reading the %d that are",
                    absent, len(listed), metadata, [str(d) for d in image_dirs], len(records))
    return records


def knee_patient_id(file_name: str) -> str:
    """OAI patient id from a knee file name `<patient>{L,R}.jpg`."""
    match = _KNEE_PATIENT.match(file_name)
    if match is None:
        raise DatasetLayoutError(f"knee file name without an OAI patient id: {file_name!r}")
    return match.group(1)


def knee_base(root: Path) -> Path:
    """The folder holding the knee KL splits: `<root>/knee_kl`, or `root` itself when it is that
    folder or holds the split folders directly (the release unpacks as e.g. kneeKL224/{train,val,test})."""
    root = Path(root)
    if root.name == "knee_kl" or not (root / "knee_kl").is_dir() and any(
            (root / split / "0").is_dir() for split in ("train", "val", "test")):
        return root
    return root / "knee_kl"


def read_knee_kl(root: Path, split: str) -> list[Record]:
    """Knee KL: `<root>/knee_kl/<split>/{0..4}/*.jpg` (or `<root>/<split>/{0..4}`: see knee_base).
    Label = KL grade as text."""
    base = knee_base(root)
    split_dir = _require_dir(base / split, f"knee KL '{split}' split")
    unknown = [name for name in _label_folders(split_dir) if name not in KL_GRADES]
    if unknown:
        raise DatasetLayoutError(f"unknown KL grade folder(s) {unknown} in {split_dir}; expected {KL_GRADES}")
    records = []
    for grade in KL_GRADES:
        folder = _require_dir(split_dir / grade, f"knee KL grade {grade}")
        records += [Record(p, grade, knee_patient_id(p.name)) for p in _images_in(folder)]
    if not records:
        raise DatasetLayoutError(f"no images under {split_dir}")
    return records
