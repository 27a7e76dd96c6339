"""Held-out metrics with 95% bootstrap intervals resampled over groups (patients / lesions).

Resampling whole groups rather than images keeps the interval honest when one patient
contributes several images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

from training.calibration import expected_calibration_error

BOOTSTRAP_ROUNDS = 1000
BOOTSTRAP_SEED = 7

Metric = Callable[[np.ndarray, np.ndarray], float]   # (y_true, probabilities) -> value


def _binary(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    return p.argmax(1)   # as serving decides: an exact tie is the negative class


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    return float(skm.roc_auc_score(y, score)) if len(np.unique(y)) == 2 else float("nan")


def nll(y: np.ndarray, p: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (probabilities clipped at 1e-12, so one
    confident mistake costs 27.6, not infinity)."""
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0)).mean())


def calibration_metrics() -> dict[str, Metric]:
    """`ece`: expected calibration error over 15 equal-width bins of the top-class probability (the
    decision as served); `nll`: mean negative log-likelihood. Lower is better for both."""
    return {"ece": lambda y, p: expected_calibration_error(p, y), "nll": nll}


def binary_metrics() -> dict[str, Metric]:
    """Positive class = index 1 (PNEUMONIA / ABNORMAL); decision: argmax, i.e. P(positive) > 0.5.

    A metric that is undefined on the data (sensitivity with no positive, AUC with one class) is
    NaN, never 0: a set with no pneumonia did not miss every pneumonia.
    """
    def sensitivity(y, p):
        return float(skm.recall_score(y, _binary(y, p), pos_label=1, zero_division=np.nan))

    def specificity(y, p):
        return float(skm.recall_score(y, _binary(y, p), pos_label=0, zero_division=np.nan))

    return {
        "accuracy": lambda y, p: float(skm.accuracy_score(y, _binary(y, p))),
        "balanced_accuracy": lambda y, p: float(skm.balanced_accuracy_score(y, _binary(y, p))),
        "auc": lambda y, p: _auc(y, p[:, 1]),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "f1": lambda y, p: float(skm.f1_score(y, _binary(y, p), pos_label=1, zero_division=np.nan)),
        "kappa": lambda y, p: float(skm.cohen_kappa_score(y, _binary(y, p))),
        **calibration_metrics(),
    }


def multiclass_metrics(labels: Sequence[str], sensitivity_of: str | None = None) -> dict[str, Metric]:
    """Accuracy, balanced accuracy, macro one-vs-rest AUC, macro F1 (+ one class's sensitivity).

    Macro F1 averages over the classes that occur in the labels or the predictions: a class absent
    from both has no F1, and counting it as 0 would punish a perfect model. The sensitivity of a
    class with no rows is NaN.
    """

    def auc(y, p):
        present = np.unique(y)
        if len(present) < 2:
            return float("nan")
        # Macro one-vs-rest AUC over the classes present in this sample (a rare class may be missing
        # from a bootstrap resample), each ranked by the model's own probability of it: with every
        # class present, sklearn's multi_class="ovr" macro figure; renormalising the probabilities
        # over the present classes, as that call would need, would rank by another score.
        return float(np.mean([skm.roc_auc_score(y == k, p[:, k]) for k in present]))

    result: dict[str, Metric] = {
        "accuracy": lambda y, p: float(skm.accuracy_score(y, p.argmax(1))),
        "balanced_accuracy": lambda y, p: float(skm.balanced_accuracy_score(y, p.argmax(1))),
        "auc": auc,
        "macro_f1": lambda y, p: float(skm.f1_score(y, p.argmax(1), labels=np.union1d(y, p.argmax(1)),
                                                     average="macro", zero_division=0)),
    }
    result.update(calibration_metrics())
    if sensitivity_of is not None:
        index = list(labels).index(sensitivity_of)
        result[f"{sensitivity_of}_sensitivity"] = lambda y, p: float(
            skm.recall_score(y, p.argmax(1), labels=[index], average="macro", zero_division=np.nan)
        )
    return result


def with_intervals(
    metrics: dict[str, Metric], y: np.ndarray, p: np.ndarray, groups: Sequence[str],
    rounds: int = BOOTSTRAP_ROUNDS, seed: int = BOOTSTRAP_SEED,
) -> dict[str, dict[str, float]]:
    """{name: {value, ci95_low, ci95_high}}; the interval is a percentile group bootstrap."""
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    unique, group_index = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(group_index == g) for g in range(len(unique))]
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {name: [] for name in metrics}
    for _ in range(rounds):
        chosen = rng.integers(0, len(unique), len(unique))
        index = np.concatenate([members[g] for g in chosen])
        for name, metric in metrics.items():
            samples[name].append(metric(y[index], p[index]))   # NaN (undefined here) is left out below
    result = {}
    for name, metric in metrics.items():
        values = np.asarray([v for v in samples[name] if not np.isnan(v)])
        low, high = np.percentile(values, [2.5, 97.5]) if len(values) else (float("nan"), float("nan"))
        result[name] = {"value": round(metric(y, p), 4), "ci95_low": round(float(low), 4),
                        "ci95_high": round(float(high), 4)}
    return result


def json_ready(value: Any) -> Any:
    """`value` with every NaN float replaced by None (JSON has no NaN; None prints as null)."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def point_values(metrics: dict[str, Metric], y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {name: round(metric(np.asarray(y), np.asarray(p)), 4) for name, metric in metrics.items()}


def confusion(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> list[list[int]]:
    """Rows = true class, columns = predicted class, in label order."""
    return skm.confusion_matrix(y, predicted, labels=list(range(n_classes))).tolist()
