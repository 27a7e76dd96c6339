"""Would averaging two shipped models of one task beat either of them? Measured, not shipped.

    python -m training.experiments.ensemble_grid --task skin --a OLD/model.onnx --b services/skin/model/model.onnx \
        [--split-csv services/skin/model/split.csv] [--min-balanced 0.70]

With the same file as --a and --b it measures one model's own operating points (tau alone), running it once.

Both models are scored (as served: `training.inference.run_onnx`, their own test-time views included)
on the validation and test rows of one split.csv that neither trained on. The decision is then
argmax of (w * p_b + (1 - w) * p_a) * prior^tau, over a grid of the weight w (0 = model a alone,
1 = model b alone) and of tau (the training prior's exponent: > 0 moves decisions toward the common
classes, raising accuracy; < 0 toward the rare ones, raising balanced accuracy). The operating point
is chosen on validation only: the most accurate with balanced accuracy >= --min-balanced; the test
rows are scored at that point once, and at each model's own argmax for comparison. A 95% interval of
the chosen point's validation figures, resampling whole groups (lesions, patients), says how much
of the choice is noise. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from training.evaluate import records_from_split_csv
from training.inference import run_onnx
from training.metrics import multiclass_metrics, point_values, with_intervals
from training.paths import data_dir
from training.splits import read_split_csv
from training.tasks import SPECS, TRAINING

WEIGHTS = np.round(np.arange(0.0, 1.0001, 0.1), 2)
TAUS = np.round(np.arange(-0.25, 0.5001, 0.0625), 4)
BOOTSTRAP_ROUNDS = 300


# Of training.metrics' multiclass figures, the two the target names (argmax decisions only).
FIGURES = {name: metric for name, metric in multiclass_metrics(()).items() if name in ("accuracy", "balanced_accuracy")}


def figures(y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Accuracy and balanced accuracy of argmax(scores)."""
    return point_values(FIGURES, y, scores)


def reported(task: str, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """figures() plus the sensitivity the task's metrics single out (skin: melanoma), if any."""
    sensitivities = {name: metric for name, metric in TRAINING[task].metric_set().items()
                     if name.endswith("_sensitivity")}
    return {**figures(y, scores), **point_values(sensitivities, y, scores)}


def decision_scores(p_a: np.ndarray, p_b: np.ndarray, weight: float, prior: np.ndarray, tau: float) -> np.ndarray:
    return (weight * p_b + (1 - weight) * p_a) * prior ** tau


def choose(p_a: np.ndarray, p_b: np.ndarray, y: np.ndarray, prior: np.ndarray,
           min_balanced: float) -> tuple[float, float, dict[str, float]] | None:
    """(w, tau, validation figures) of the most accurate grid point with balanced accuracy >= min_balanced."""
    best = None
    for weight in WEIGHTS:
        for tau in TAUS:
            got = figures(y, decision_scores(p_a, p_b, weight, prior, tau))
            if got["balanced_accuracy"] >= min_balanced and (best is None or got["accuracy"] > best[2]["accuracy"]):
                best = (float(weight), float(tau), got)
    return best


def group_interval(y: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> dict[str, list[float]]:
    """95% intervals of figures() resampling whole groups (training.metrics.with_intervals)."""
    return {name: [got["ci95_low"], got["ci95_high"]]
            for name, got in with_intervals(FIGURES, y, scores, groups, rounds=BOOTSTRAP_ROUNDS).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.experiments.ensemble_grid",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=sorted(SPECS))
    parser.add_argument("--a", type=Path, required=True, help="first model.onnx")
    parser.add_argument("--b", type=Path, required=True, help="second model.onnx")
    parser.add_argument("--split-csv", type=Path, help="default: services/<task>/model/split.csv")
    parser.add_argument("--min-balanced", type=float, default=0.70)
    parser.add_argument("--data")
    args = parser.parse_args(argv)
    root = data_dir(args.data)
    split_csv = args.split_csv or Path("services") / args.task / "model" / "split.csv"
    labels = [label.code for label in SPECS[args.task].labels]
    train_counts = Counter(s.record.label for s in read_split_csv(split_csv, root) if s.split == "train")
    prior = np.array([train_counts[label] for label in labels], dtype=float)
    prior /= prior.sum()

    scored = {}
    for split in ("val", "test"):
        records = records_from_split_csv(split_csv, root, split)
        paths = [r.path for r in records]
        models = {"a": args.a.resolve(), "b": args.b.resolve()}
        probabilities = {path: run_onnx(path, paths)["probabilities"] for path in set(models.values())}
        scored[split] = {"y": np.array([labels.index(r.label) for r in records]),
                         "groups": np.array([r.group for r in records]),
                         **{name: probabilities[path] for name, path in models.items()}}
    val, test = scored["val"], scored["test"]
    result: dict = {"task": args.task, "a": str(args.a), "b": str(args.b), "split_csv": str(split_csv),
                    "rows": {split: int(len(s["y"])) for split, s in scored.items()},
                    "alone_argmax": {name: {split: reported(args.task, s["y"], s[name])
                                            for split, s in scored.items()}
                                     for name in ("a", "b")},
                    "grid_validation": [{"weight": float(w), "tau": float(t),
                                         **figures(val["y"], decision_scores(val["a"], val["b"], w, prior, t))}
                                        for w in WEIGHTS for t in TAUS]}
    chosen = choose(val["a"], val["b"], val["y"], prior, args.min_balanced)
    if chosen is None:
        result["chosen"] = None
    else:
        weight, tau, _ = chosen
        on_val = decision_scores(val["a"], val["b"], weight, prior, tau)
        result["chosen"] = {
            "weight": weight, "tau": tau,
            "validation": reported(args.task, val["y"], on_val),
            "validation_interval": group_interval(val["y"], on_val, val["groups"]),
            "test": reported(args.task, test["y"], decision_scores(test["a"], test["b"], weight, prior, tau))}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
