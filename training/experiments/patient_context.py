"""Measure what a patient's age, sex and lesion site add to the skin model (measured, not shipped).

    python -m training.experiments.patient_context [--data DIR] [--model-dir services/skin/model]

What a dermatologist knows besides the picture changes what a lesion probably is: naevi are
common in the young and on the back, keratoses and carcinomas in the old and on the face. This
counts, on the training rows of the model folder's `split.csv`, each HAM10000 metadata value per
class (Laplace-smoothed) and turns the counts into log-likelihood ratios
log p(value | class) / p(value); the image model's probabilities are then updated as by Bayes'
rule, assuming the fields and the image independent given the class:

    p(class | image, context) ∝ p(class | image) · Π_field p(value | class) / p(value)

A field not given adds nothing. Nothing is tuned (smoothing 1, weight 1 as Bayes' rule has it).
It prints one JSON object: the validation and test figures with and without the context. Serving
does not use it: on the held-out rows it raised accuracy but lowered balanced accuracy and
melanoma sensitivity (training/experiments/FINDINGS.md).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.datasets import HAM10000_LABELS, DatasetLayoutError, Record, ham10000_metadata
from training.evaluate import records_from_split_csv, score_outputs
from training.inference import run_onnx
from training.paths import data_dir
from training.tasks import SPECS

FIELDS = ("age_bin", "sex", "site")
# Decades 0-9, ..., 70-79, then 80 and over (HAM10000 records ages in steps of 5 years).
AGE_BIN_STARTS = (0, 10, 20, 30, 40, 50, 60, 70, 80)
SUMMARY = ("accuracy", "balanced_accuracy", "auc", "macro_f1", "mel_sensitivity")


@dataclass(frozen=True)
class PatientContext:
    """Age bin, sex and site of one image; None = not recorded."""

    age_bin: int | None = None
    sex: str | None = None
    site: str | None = None


def read_ham10000_context(root: Path) -> dict[str, PatientContext]:
    """{image_id: context} from `HAM10000_metadata.csv`; empty or "unknown" values are not recorded."""
    metadata = ham10000_metadata(root)
    contexts = {}
    with metadata.open(newline="", encoding="utf-8-sig") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            value = {key: None if (row.get(key) or "").strip() in ("", "unknown") else row[key].strip()
                     for key in ("age", "sex", "localization")}
            try:
                age = None if value["age"] is None else float(value["age"])
            except ValueError:
                raise DatasetLayoutError(f"{metadata}:{line}: age {value['age']!r} is not a number") from None
            age_bin = None if age is None else int(np.searchsorted(AGE_BIN_STARTS, age, side="right") - 1)
            contexts[row["image_id"]] = PatientContext(age_bin, value["sex"], value["localization"])
    return contexts


def fit(rows: Sequence[tuple[str, PatientContext]], labels: Sequence[str] = HAM10000_LABELS,
        smoothing: float = 1.0) -> dict[str, dict[object, np.ndarray]]:
    """{field: {value: log p(value | class) / p(value) per class}} counted over (label, context) rows."""
    index = {label: i for i, label in enumerate(labels)}
    tables = {}
    for field in FIELDS:
        counts: dict[object, np.ndarray] = {}
        for label, context in rows:
            value = getattr(context, field)
            if value is not None:
                counts.setdefault(value, np.zeros(len(labels)))[index[label]] += 1
        values = sorted(counts, key=str)
        if not values:
            tables[field] = {}
            continue
        matrix = np.stack([counts[v] for v in values]) + smoothing             # (values, classes)
        ratio = np.log(matrix / matrix.sum(axis=0)) - np.log(matrix.sum(axis=1) / matrix.sum())[:, None]
        tables[field] = dict(zip(values, ratio, strict=True))
    return tables


def combine(probabilities: np.ndarray, contexts: Sequence[PatientContext],
            tables: dict[str, dict[object, np.ndarray]]) -> np.ndarray:
    """Each row of image probabilities updated with its context (a value not in the tables adds nothing)."""
    logits = np.log(np.maximum(np.asarray(probabilities, dtype=np.float64), 1e-12))
    for row, context in zip(logits, contexts, strict=True):
        for field in FIELDS:
            row += tables[field].get(getattr(context, field), 0.0)
    odds = np.exp(logits - logits.max(axis=1, keepdims=True))
    return odds / odds.sum(axis=1, keepdims=True)


def _summary(scored: dict[str, object]) -> dict[str, object]:
    return {key: scored[key] for key in SUMMARY if key in scored}


def measure(model_dir: Path, root: Path) -> dict[str, dict[str, object]]:
    """Validation and test figures of the model folder with and without the patient context."""
    split_csv = model_dir / "split.csv"
    contexts = read_ham10000_context(root)

    def context_of(records: Sequence[Record]) -> list[PatientContext]:
        return [contexts.get(r.path.stem, PatientContext()) for r in records]

    train = records_from_split_csv(split_csv, root, "train")
    tables = fit([(r.label, c) for r, c in zip(train, context_of(train), strict=True)])
    result = {}
    for split in ("val", "test"):
        records = records_from_split_csv(split_csv, root, split)
        image_only = run_onnx(model_dir / "model.onnx", [r.path for r in records])["probabilities"]
        combined = combine(image_only, context_of(records), tables)
        result[split] = {
            "image_only": _summary(score_outputs("skin", records, {"probabilities": image_only})),
            "with_context": _summary(score_outputs("skin", records, {"probabilities": combined})),
            "rows_with": {f: sum(getattr(c, f) is not None for c in context_of(records)) for f in FIELDS},
            "n": len(records),
        }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.experiments.patient_context", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="dataset root (default: DRTECH_DATA_DIR or ../shared/data)")
    parser.add_argument("--model-dir", type=Path, default=SPECS["skin"].model_dir,
                        help="skin model folder with model.onnx and split.csv (default: the shipped one)")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.model_dir, data_dir(args.data))))
    return 0


if __name__ == "__main__":
    from training.cli import run

    raise SystemExit(run(main))
