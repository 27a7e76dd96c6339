"""Evaluate a shipped model through ONNX Runtime + serving's decoding and preprocessing on labelled data.

    python -m training.evaluate --task pneumonia --data ../shared/data [--model PATH]
        [--split test] [--split-csv services/pneumonia/model/split.csv] [--allow-seen]

Images are decoded as a model service decodes an upload (training.inference.serving_input). A model
of another task is refused (its card's labels, its number of classes), and so are images the model
trained or validated on (the split.csv beside it) unless --allow-seen: those would be training
scores, not held-out figures.

The LAST line printed is one JSON object: task, n, labels, accuracy, balanced_accuracy, auc,
confusion_matrix (+ binary: sensitivity, specificity, f1, kappa; skin: macro_f1, mel_sensitivity;
bone on knee data: KL0 = NORMAL, KL>=2 = ABNORMAL, KL1 excluded, plus kl_grade_accuracy; bone on
MURA: studies, study_accuracy and study_kappa per study type and overall, a study's probability
being the mean over its views as in the MURA paper). A metric the data leaves undefined (AUC with
one class, a sensitivity with no positive case) is null.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training import datasets, mura
from training.datasets import Record
from training.inference import run_onnx
from training.metrics import confusion, json_ready, point_values, with_intervals
from training.paths import data_dir
from training.splits import read_split_csv
from training.tasks import SPECS, TRAINING, label_index, uses_mura


def is_knee(task: str, records: Sequence[Record]) -> bool:
    """Bone records labelled with KL grades (knee data) rather than MURA's NORMAL / ABNORMAL."""
    return task == "bone" and all(r.label in datasets.KL_GRADES for r in records)


def binary_targets(task: str, records: Sequence[Record]) -> tuple[np.ndarray, np.ndarray]:
    """(keep, y): which records the `probabilities` head is scored on, and their label indices.

    Everything is kept except KL1 knees, which have no NORMAL/ABNORMAL label.
    """
    indices = [label_index(task, r.label) for r in records]
    keep = np.array([index is not None for index in indices], dtype=bool)
    return keep, np.array([index for index in indices if index is not None], dtype=int)


def outputs_for(task: str, records: Sequence[Record]) -> tuple[str, ...]:
    return ("probabilities", "kl_probabilities") if is_knee(task, records) else ("probabilities",)


def evaluate_records(task: str, model_path: Path, records: Sequence[Record],
                     intervals: bool = False) -> dict[str, Any]:
    """Metrics of the model at `model_path` on `records` (dataset labels: KL grades for knee data).
    Raises ValueError when the model is not a `task` model (its card's labels, or its number of
    classes), rather than scoring it against labels it does not have."""
    check_model_is_for(task, model_path)
    outputs = run_onnx(model_path, [r.path for r in records[:1]], outputs_for(task, records))
    classes = outputs["probabilities"].shape[1]     # checked on one image, before the whole pass
    if classes != len(SPECS[task].labels):
        raise ValueError(f"{model_path} gives {classes} classes; a {task} model gives "
                         f"{len(SPECS[task].labels)} ({', '.join(SPECS[task].label_codes)})")
    outputs = run_onnx(model_path, [r.path for r in records], outputs_for(task, records))
    return score_outputs(task, records, outputs, intervals)


def check_model_is_for(task: str, model_path: Path) -> None:
    """The model card beside `model_path`, when there is one, must be a `task` card with its labels."""
    card_path = Path(model_path).parent / "card.json"
    if not card_path.is_file():
        return
    card = json.loads(card_path.read_text(encoding="utf-8"))
    if card.get("task") != task or list(card.get("labels", [])) != list(SPECS[task].label_codes):
        raise ValueError(f"{model_path} is a {card.get('task')!r} model (labels {card.get('labels')}), "
                         f"not a {task} model (labels {SPECS[task].label_codes})")


def score_outputs(task: str, records: Sequence[Record], outputs: dict[str, np.ndarray],
                  intervals: bool = False) -> dict[str, Any]:
    """Metrics of a model's `outputs` (training.inference.run_onnx of `records`, in order).

    Bone on MURA also gets the MURA paper's study-level figures (mean P(abnormal) over a study's
    views, Cohen's kappa per study type); bone on knee data the KL grade figures.
    """
    spec = SPECS[task]
    keep, y = binary_targets(task, records)
    if not len(y):
        raise ValueError(f"none of the {len(records)} images has a {task} label to score: knee KL1 "
                         "('doubtful') images are excluded from normal/abnormal")
    p = outputs["probabilities"][keep]
    groups = [r.group for r, k in zip(records, keep, strict=True) if k]
    metrics = TRAINING[task].metric_set()
    values = with_intervals(metrics, y, p, groups) if intervals else point_values(metrics, y, p)
    result: dict[str, Any] = {"task": task, "n": int(len(y)), "labels": spec.label_codes}
    result.update(values)
    result["confusion_matrix"] = confusion(y, p.argmax(1), len(spec.labels))
    if task == "bone" and records and all(mura.is_mura_path(r.path) for r in records):
        result.update(mura.study_report(mura.images_from_records(records), outputs["probabilities"]))
    if is_knee(task, records):
        y_all = np.array([int(r.label) for r in records])
        kl = outputs["kl_probabilities"]
        kl_metrics = {
            "kl_grade_accuracy": lambda yy, pp: float((pp.argmax(1) == yy).mean()),
            "kl_grade_mae": lambda yy, pp: float(np.abs(pp.argmax(1) - yy).mean()),
        }
        all_groups = [r.group for r in records]
        kl_values = (with_intervals(kl_metrics, y_all, kl, all_groups) if intervals
                     else point_values(kl_metrics, y_all, kl))
        result.update(kl_values)
        result["n_kl"] = int(len(y_all))
        result["kl_excluded_from_binary"] = int((~keep).sum())
        result["kl_confusion_matrix"] = confusion(y_all, kl.argmax(1), len(datasets.KL_GRADES))
    return result


def records_for(task: str, root: Path, split: str | None) -> list[Record]:
    """Records of `root` in the task's dataset layout (bone: knee KL, or MURA if present)."""
    root = Path(root)
    if task == "pneumonia":
        return datasets.read_kermany(root, split or "test")
    if task == "skin":
        if split is not None:
            # HAM10000 is one folder of lesions with no split of its own: scoring "its test split"
            # would score every image, training images included.
            raise ValueError("HAM10000 has no split folders: pass --split-csv (a model's split.csv) "
                             f"to score its {split!r} rows, or no --split to score the whole folder")
        return datasets.read_ham10000(root, listed_only=True)
    if task == "bone":
        if uses_mura(task, root):
            return mura.as_records(mura.read_mura_images(root, split or "valid"))
        base = datasets.knee_base(root)
        if split is None:
            # The knee release calls its held-out patients "val"; a "test" folder wins if present.
            split = "test" if (base / "test").is_dir() else "val"
        return datasets.read_knee_kl(root, split)
    raise ValueError(f"unknown task {task!r}")


def records_from_split_csv(csv_path: Path, root: Path, split: str) -> list[Record]:
    """The rows of a model's split.csv (written by training) that belong to `split`."""
    records = [item.record for item in read_split_csv(csv_path, root) if item.split == split]
    if not records:
        raise ValueError(f"{csv_path} has no rows in split {split!r}")
    return records


def image_key(path: Path) -> tuple[str, ...]:
    """What names an image in any of the layouts a dataset may be given in, whatever folder it
    sits under: a MURA view by split/type/patient/study/file, a HAM10000 image by its ISIC file
    name (unique), a Kermany or knee image by split/class/file."""
    parts = Path(path).parts
    if mura.is_mura_path(path):
        return parts[-5:]
    if Path(path).name.upper().startswith("ISIC_"):
        return parts[-1:]
    return parts[-3:]


def refuse_seen_images(model_path: Path, root: Path, records: Sequence[Record]) -> None:
    """Raise ValueError when some of `records` trained or validated the model (its split.csv, when
    beside it): such figures would be its training scores, not a held-out measurement. Images are
    matched by image_key, so the check holds however the data root is given."""
    split_csv = Path(model_path).parent / "split.csv"
    if not split_csv.is_file():
        return
    used = [item for item in read_split_csv(split_csv, root) if item.split != "test"]
    seen = {image_key(item.record.path) for item in used}
    overlap = sum(image_key(record.path) in seen for record in records)
    if overlap:
        raise ValueError(
            f"{overlap} of these {len(records)} images trained or validated this model ({split_csv}): "
            f"pass --split-csv {split_csv} to score its held-out rows, or --allow-seen to score them anyway"
        )
    # Other images of a patient (or lesion) the model learned from: not an error (a dataset's
    # published splits may number patients on their own), but the figures may be optimistic.
    groups = {item.record.group for item in used}
    shared = {record.group for record in records} & groups
    if shared:
        images = sum(record.group in shared for record in records)
        print(f"warning: {images} of these {len(records)} images belong to {len(shared)} patients or lesions "
              f"(by the ids in their file names or metadata) whose other images trained or validated this "
              f"model ({split_csv}), e.g. {min(shared)!r}: the figures may be optimistic",
              file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=sorted(SPECS))
    parser.add_argument("--data", help="dataset root (default: DRTECH_DATA_DIR or ../shared/data)")
    parser.add_argument("--model", type=Path, help="ONNX model (default: the shipped services/<task>/model)")
    parser.add_argument("--split", help="dataset split folder (pneumonia: test; bone: test, else val / valid; "
                        "skin has none: only with --split-csv)")
    parser.add_argument("--split-csv", type=Path,
                        help="evaluate the rows of this split.csv whose split is --split (default test)")
    parser.add_argument("--intervals", action="store_true", help="add 95%% group-bootstrap intervals")
    parser.add_argument("--allow-seen", action="store_true",
                        help="score images the model trained or validated on (refused by default)")
    args = parser.parse_args(argv)
    root = data_dir(args.data)
    model = args.model or SPECS[args.task].model_path
    try:
        if args.split_csv:
            records = records_from_split_csv(args.split_csv, root, args.split or "test")
        else:
            records = records_for(args.task, root, args.split)
        if not args.allow_seen:
            refuse_seen_images(model, root, records)
        result = evaluate_records(args.task, model, records, intervals=args.intervals)
    except (datasets.DatasetLayoutError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(json_ready(result), allow_nan=False))   # undefined metrics print as null
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
