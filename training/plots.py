"""PNG figures for a model folder: training curves, confusion matrix, ROC curves, reliability diagram.

The gateway shows every `services/<task>/model/*.png` on the Models page, so these are what a user
sees next to the model card. Figures are drawn with matplotlib's object API on the Agg (file-only)
backend, never pyplot, so nothing needs a display and no global figure state is shared. Every
figure is FIGSIZE inches at DPI, i.e. exactly PIXELS (width, height) pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn import metrics as skm

from training.calibration import DEFAULT_BINS, expected_calibration_error, reliability_bins

FIGSIZE = (6.4, 4.8)
DPI = 100
PIXELS = (640, 480)


def _figure(figsize: tuple[float, float] = FIGSIZE) -> Figure:
    figure = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=DPI)     # no bbox_inches="tight": keeps the size fixed
    return path


def training_curves(history: Mapping[str, Sequence[float]], path: Path, title: str = "Training") -> Path:
    """Loss (and accuracy, when present) per epoch, training and validation, from Keras `History.history`."""
    if "loss" not in history or not len(history["loss"]):
        raise ValueError(f"history needs a non-empty 'loss' series, got keys {sorted(history)}")
    metric = next((k for k in ("accuracy", "acc", "sparse_categorical_accuracy", "binary_accuracy")
                   if k in history), None)
    panels = ["loss"] + ([metric] if metric else [])
    figure = _figure()
    for column, key in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), column)
        for series, style in ((key, "-"), (f"val_{key}", "--")):
            if series in history:
                values = np.asarray(history[series], dtype=float)
                axes.plot(np.arange(1, len(values) + 1), values, style, marker="o", markersize=3,
                          label="validation" if series.startswith("val_") else "training")
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(key)
        axes.set_title(f"{title}: {key}")
        axes.grid(alpha=0.3)
        axes.legend()
    return _save(figure, path)


def confusion_matrix(confusion: Sequence[Sequence[int]], labels: Sequence[str], path: Path,
                     title: str = "Confusion matrix (held-out)") -> Path:
    """Counts per (true, predicted) cell, coloured by the share of the true class (row)."""
    counts = np.asarray(confusion, dtype=int)
    if counts.shape != (len(labels), len(labels)):
        raise ValueError(f"confusion matrix shape {counts.shape} does not match {len(labels)} labels")
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.nan_to_num(counts / counts.sum(axis=1, keepdims=True))
    figure = _figure()
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, label="share of the true class")
    for i in range(len(labels)):
        for j in range(len(labels)):
            axes.text(j, i, f"{counts[i, j]}\n{shares[i, j]:.0%}", ha="center", va="center", fontsize=8,
                      color="white" if shares[i, j] > 0.5 else "black")
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    return _save(figure, path)


def roc_curves(y: np.ndarray, probabilities: np.ndarray, labels: Sequence[str], path: Path,
               title: str = "ROC (held-out)") -> Path:
    """Binary: one curve of the positive class (labels[1]); multi-class: one-vs-rest per class.

    `probabilities` is (n,) P(positive), or (n, C) in `labels` order. The legend gives each AUC.
    """
    y = np.asarray(y)
    p = np.asarray(probabilities, dtype=float)
    if p.ndim == 1 or p.shape[1] == 1:
        p = np.stack([1 - p.reshape(-1), p.reshape(-1)], axis=1)
    if p.shape != (len(y), len(labels)):
        raise ValueError(
            f"probabilities shape {p.shape} does not match {len(y)} samples x {len(labels)} labels"
        )
    classes = [1] if len(labels) == 2 else range(len(labels))
    figure = _figure()
    axes = figure.add_subplot()
    for c in classes:
        positive = y == c
        if positive.all() or not positive.any():
            continue                                    # ROC undefined without both outcomes
        fpr, tpr, _ = skm.roc_curve(positive, p[:, c])
        axes.plot(fpr, tpr, label=f"{labels[c]} (AUC {skm.auc(fpr, tpr):.3f})")
    axes.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    axes.set_xlabel("false positive rate (1 - specificity)")
    axes.set_ylabel("true positive rate (sensitivity)")
    axes.set_title(title if len(labels) == 2 else f"{title}, one-vs-rest")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.legend(loc="lower right", fontsize=8)
    return _save(figure, path)


def reliability_diagram(series: Mapping[str, np.ndarray], y: np.ndarray, path: Path,
                        n_bins: int = DEFAULT_BINS, title: str = "Reliability (held-out)") -> Path:
    """Accuracy vs mean confidence per equal-width confidence bin, one line per named series
    (e.g. {"before": p, "after temperature scaling": p_T}); the legend gives each ECE."""
    if not series:
        raise ValueError("need at least one series of probabilities")
    figure = _figure()
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    for name, probabilities in series.items():
        bins = reliability_bins(probabilities, y, n_bins)
        filled = bins.count > 0
        ece = expected_calibration_error(probabilities, y, n_bins)
        axes.plot(bins.confidence[filled], bins.accuracy[filled], marker="o", label=f"{name} (ECE {ece:.3f})")
    axes.set_xlabel("confidence (probability of the predicted class)")
    axes.set_ylabel("accuracy")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_title(f"{title}, {n_bins} bins")
    axes.legend(loc="upper left", fontsize=8)
    return _save(figure, path)
