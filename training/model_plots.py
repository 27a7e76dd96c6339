"""Held-out plots of a shipped model, written next to its card for the Models page.

    python -m training.model_plots --task {bone,skin,pneumonia} [--data DIR]

Runs `services/<task>/model/model.onnx` (ONNX Runtime, the serving preprocessing) on the test rows
of that model's `split.csv` and writes `confusion_matrix.png`, `roc.png` and `reliability.png`
(bone on knee data also `kl_confusion_matrix.png`); the reliability diagram shows the shipped
(temperature-scaled) model and, with the T from card.json undone, the model before calibration.
Training curves (`training_curves*.png`) are written by training.train from the run's Keras history.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.core.spec import TaskSpec
from training import datasets, plots
from training.calibration import apply_temperature, logits_of_calibrated
from training.evaluate import binary_targets, is_knee, outputs_for, records_from_split_csv
from training.inference import run_onnx
from training.metrics import confusion
from training.paths import data_dir
from training.tasks import SPECS


def write_plots(spec: TaskSpec, root: Path) -> list[Path]:
    """Score the model's held-out test rows and draw its plots; returns the files written."""
    records = records_from_split_csv(spec.model_dir / "split.csv", root, "test")
    knee = is_knee(spec.task, records)
    scored = run_onnx(spec.model_path, [r.path for r in records], outputs_for(spec.task, records))
    probabilities = scored["probabilities"]
    keep, y = binary_targets(spec.task, records)
    p = probabilities[keep]
    names = [label.display_name for label in spec.labels]
    out = spec.model_dir
    written = [
        plots.confusion_matrix(confusion(y, p.argmax(1), len(names)), names, out / "confusion_matrix.png"),
        plots.roc_curves(y, p, names, out / "roc.png"),
        plots.reliability_diagram(_before_and_after(spec, p), y, out / "reliability.png"),
    ]
    if knee:
        y_kl = np.array([int(r.label) for r in records])
        kl = scored["kl_probabilities"].argmax(1)
        grades = [f"KL{g}" for g in datasets.KL_GRADES]
        written.append(
            plots.confusion_matrix(confusion(y_kl, kl, len(grades)), grades, out / "kl_confusion_matrix.png",
                                   title="KL grade confusion matrix (held-out)")
        )
    return written


def _before_and_after(spec: TaskSpec, p: np.ndarray) -> dict[str, np.ndarray]:
    """The shipped probabilities and, when the card records a temperature T baked into the model,
    the uncalibrated ones they came from (T undone, see calibration.logits_of_calibrated)."""
    card_path = spec.model_dir / "card.json"
    card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else {}
    temperature = card.get("calibration", {}).get("heads", {}).get("probabilities", {}).get("temperature")
    if temperature is None:
        return {spec.task: p}
    return {"before temperature scaling": apply_temperature(logits_of_calibrated(p, temperature), 1.0),
            f"shipped (T = {temperature:.3g})": p}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=sorted(SPECS))
    parser.add_argument("--data", default=None, help="data root (default: DRTECH_DATA_DIR or ../shared/data)")
    args = parser.parse_args(argv)
    for path in write_plots(SPECS[args.task], data_dir(args.data)):
        print(path)
    return 0


if __name__ == "__main__":
    from training.cli import run

    raise SystemExit(run(main))
