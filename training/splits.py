"""Leak-free, stratified, seeded group splits, written to a CSV next to the model for audit.

Every group (patient or lesion) lands in exactly one split, so no patient's or lesion's images
are seen in training and then scored as held-out.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sklearn.model_selection import StratifiedGroupKFold

from training.datasets import Record

SEED = 20261126
# Twenty folds of ~5% each: 3 folds test, 3 folds val, 14 folds train gives ~70/15/15.
_FOLDS = 20


SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitRecord:
    record: Record
    split: str          # "train", "val" or "test"


def _fold_of_each(records: Sequence[Record], folds: int, seed: int) -> list[int]:
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    labels = [r.label for r in records]
    groups = [r.group for r in records]
    fold_of = [-1] * len(records)
    for fold, (_, held) in enumerate(splitter.split(labels, labels, groups)):
        for index in held:
            fold_of[index] = fold
    return fold_of


def group_split(
    records: Sequence[Record], fractions: dict[str, int], seed: int = SEED
) -> list[SplitRecord]:
    """Assign whole groups to splits, stratified by label.

    `fractions` maps split name -> number of twentieths, e.g. {"train": 14, "val": 3, "test": 3}.
    """
    if sum(fractions.values()) != _FOLDS:
        raise ValueError(f"split fractions must add up to {_FOLDS} twentieths, got {fractions}")
    fold_of = _fold_of_each(records, _FOLDS, seed)
    split_of_fold: list[str] = []
    for name, count in fractions.items():
        split_of_fold += [name] * count
    result = [SplitRecord(r, split_of_fold[f]) for r, f in zip(records, fold_of, strict=True)]
    assert_no_group_leakage(result)
    return result


def train_val_test_split(records: Sequence[Record], seed: int = SEED) -> list[SplitRecord]:
    """~70/15/15 by group (pneumonia: patient; skin: lesion)."""
    return group_split(records, {"test": 3, "val": 3, "train": 14}, seed)


def train_val_split_with_given_test(
    train_records: Sequence[Record], test_records: Sequence[Record], seed: int = SEED
) -> list[SplitRecord]:
    """~85/15 by group of the given train records, and the dataset's own held-out folder as test."""
    split = group_split(train_records, {"val": 3, "train": 17}, seed)
    split += [SplitRecord(r, "test") for r in test_records]
    assert_no_group_leakage(split)
    return split


def id_range_split(records: Sequence[Record], held_fraction: float = 0.15, test_twentieths: int = 3,
                   seed: int = SEED) -> list[SplitRecord]:
    """A validation split that stresses shift: the lowest patient ids of each naming family, not a
    random sample of patients.

    Ids are numbered in the order the images were collected, so a contiguous range of the earliest
    patients of each family (Kermany: `IM-`, `NORMAL2-IM-`, `person`) is an acquisition period the
    model never trained on: held out as "val" (at least `held_fraction` of each family's images,
    whole patients). The other patients are split at random by patient and label into "test"
    (`test_twentieths` of all images: the in-distribution figures) and "train". Kermany's own test
    folder holds normal patients numbered below every one in its train folder, so this validation is
    the nearest the train folder comes to it.
    """
    families: dict[str, list[tuple[int, str]]] = {}
    images_of: Counter[str] = Counter(r.group for r in records)
    for group in images_of:
        match = re.fullmatch(r"(.*?)(\d+)", group)
        if match is None:
            raise ValueError(f"group {group!r} has no trailing number to order it by")
        families.setdefault(match.group(1), []).append((int(match.group(2)), group))
    held: set[str] = set()
    for members in families.values():
        total, taken = sum(images_of[g] for _, g in members), 0
        for _, group in sorted(members):
            if taken >= held_fraction * total:
                break
            held.add(group)
            taken += images_of[group]
    rest = [r for r in records if r.group not in held]
    # The rest: twentieths of the whole dataset, so `test_twentieths` keeps its meaning.
    rest_folds = round(_FOLDS * len(rest) / len(records))
    fold_of = _fold_of_each(rest, rest_folds, seed)
    result = [SplitRecord(r, "val") for r in records if r.group in held]
    result += [SplitRecord(r, "test" if f < test_twentieths else "train") for r, f in zip(rest, fold_of, strict=True)]
    assert_no_group_leakage(result)
    return result


def assert_no_group_leakage(split: Sequence[SplitRecord]) -> None:
    """Raise if any group, or any image file, appears in more than one split."""
    seen: dict[str, str] = {}
    seen_paths: dict[Path, str] = {}
    for item in split:
        previous = seen.setdefault(item.record.group, item.split)
        if previous != item.split:
            raise ValueError(f"group {item.record.group!r} is in both {previous!r} and {item.split!r}")
        previous = seen_paths.setdefault(item.record.path, item.split)
        if previous != item.split:
            raise ValueError(f"image {item.record.path} is in both {previous!r} and {item.split!r}")


def counts(split: Sequence[SplitRecord]) -> dict[str, dict[str, int]]:
    """{split: {label: images}} plus a 'groups' entry per split."""
    result: dict[str, dict[str, int]] = {}
    for name in ("train", "val", "test"):
        items = [s for s in split if s.split == name]
        by_label = Counter(s.record.label for s in items)
        result[name] = {"images": len(items), "groups": len({s.record.group for s in items}),
                        **dict(sorted(by_label.items()))}
    return result


def write_split_csv(split: Sequence[SplitRecord], path: Path, data_root: Path) -> None:
    """CSV path,label,group,split with paths relative to the data root (never the images themselves)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group", "split"])
        for item in split:
            writer.writerow([_relative_to(item.record.path, data_root).as_posix(), item.record.label,
                             item.record.group, item.split])


def _relative_to(path: Path, root: Path) -> Path:
    """`path` below `root`: as written (a dataset folder may be a symbolic link to another disk),
    else with links resolved on both sides; ValueError when it is below neither."""
    written = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root)))
    if ".." not in written.parts:
        return written
    return Path(path).resolve().relative_to(Path(root).resolve())


def read_split_csv(path: Path, data_root: Path) -> list[SplitRecord]:
    """The rows of a split.csv written by `write_split_csv`, paths resolved under `data_root`."""
    with Path(path).open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path} has no rows")
    missing = {"path", "label", "group", "split"} - set(rows[0])
    if missing:
        raise ValueError(f"{path} is not a split.csv: no column {', '.join(sorted(missing))}")
    for line, row in enumerate(rows, start=2):
        relative = Path(row["path"])
        if not row["path"] or relative.anchor or ".." in relative.parts:
            raise ValueError(f"{path} line {line}: {row['path']!r} is not a path inside the data root")
        if row["split"] not in SPLITS:
            raise ValueError(f"{path} line {line}: split {row['split']!r} is not one of {SPLITS}")
    return [SplitRecord(Record(Path(data_root) / row["path"], row["label"], row["group"]), row["split"])
            for row in rows]


def assert_trained_on_split(run_split_csv: Path, split: Sequence[SplitRecord], data_root: Path) -> None:
    """A fine-tuning run (its `split.csv`) trained and chose its epoch on exactly the train and val
    rows of `split`: a backbone that saw a validation or test image cannot be scored on it."""
    if not Path(run_split_csv).is_file():
        raise FileNotFoundError(f"{run_split_csv} is missing: the run's split cannot be checked against "
                                "this one (training.finetune writes it beside model.weights.h5)")
    seen = {item.record.path: item.split for item in read_split_csv(run_split_csv, data_root)
            if item.split in ("train", "val")}
    expected = {item.record.path: item.split for item in split if item.split in ("train", "val")}
    if seen != expected:
        moved = sorted(str(path) for path in seen.keys() | expected.keys() if seen.get(path) != expected.get(path))
        raise ValueError(f"{run_split_csv}: the run's train/val rows differ from this split's in {len(moved)} "
                         f"images, e.g. {moved[0]}: train it with --split-csv on this split")
