"""Held-out plots of a shipped model, written next to its card for the Models page.

    python -m training.model_plots --task {bone,skin,pneumonia} [--data DIR]

Runs `services/<task>/model/model.onnx` (ONNX Runtime, the serving preprocessing) on the test rows
of that model's `split.csv` and writes `confusion_matrix.png`, `roc.png` and `reliability.png`
(bone also `kl_confusion_matrix.png`). Training curves need the Keras history of the run that made
the model; `training.plots.training_curves` draws them when a run keeps it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.core.spec import TaskSpec
from training import datasets, plots
from training.evaluate import records_from_split_csv
from training.inference import run_onnx
from training.metrics import confusion
from training.paths import data_dir
from training.tasks import SPECS, label_index


def write_plots(spec: TaskSpec, root: Path) -> list[Path]:
    """Score the model's held-out test rows and draw its plots; returns the files written."""
    records = records_from_split_csv(spec.model_dir / "split.csv", root, "test")
    knee = spec.task == "bone"
    outputs = ("probabilities", "kl_probabilities") if knee else ("probabilities",)
    scored = run_onnx(spec.model_path, [r.path for r in records], outputs)
    probabilities = scored["probabilities"]
    if knee:
        keep = np.array([label_index("bone", r.label) is not None for r in records])
        y = np.array([label_index("bone", r.label) for r in records if label_index("bone", r.label) is not None])
    else:
        keep = np.ones(len(records), dtype=bool)
        y = np.array([spec.label_codes.index(r.label) for r in records])
    p = probabilities[keep]
    names = [label.display_name for label in spec.labels]
    out = spec.model_dir
    written = [
        plots.confusion_matrix(confusion(y, p.argmax(1), len(names)), names, out / "confusion_matrix.png"),
        plots.roc_curves(y, p, names, out / "roc.png"),
        plots.reliability_diagram({spec.task: p}, y, out / "reliability.png"),
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=sorted(SPECS))
    parser.add_argument("--data", default=None, help="data root (default: DRTECH_DATA_DIR or ../shared/data)")
    args = parser.parse_args(argv)
    for path in write_plots(SPECS[args.task], data_dir(args.data)):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
