"""Each figure the Models page shows is a real PNG of the documented size, drawn from small inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import plots


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 5_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size == plots.PIXELS
        # a drawn figure, not a blank canvas: many distinct colours
        assert len(image.convert("RGB").getcolors(maxcolors=1_000_000)) > 20


def test_training_curves_from_a_keras_history_dict(tmp_path: Path):
    history = {"loss": [0.9, 0.6, 0.5], "val_loss": [1.0, 0.8, 0.75],
               "accuracy": [0.6, 0.75, 0.8], "val_accuracy": [0.55, 0.7, 0.72]}

    _assert_png(plots.training_curves(history, tmp_path / "training_curves.png"))
    _assert_png(plots.training_curves({"loss": [1.0, 0.5]}, tmp_path / "loss_only.png"))
    with pytest.raises(ValueError, match="'loss'"):
        plots.training_curves({"accuracy": [0.5]}, tmp_path / "bad.png")


def test_confusion_matrix(tmp_path: Path):
    _assert_png(plots.confusion_matrix([[50, 3, 1], [4, 20, 0], [0, 0, 0]], ["a", "b", "c"],
                                       tmp_path / "sub" / "confusion.png"))
    with pytest.raises(ValueError, match="does not match 3 labels"):
        plots.confusion_matrix([[1, 2], [3, 4]], ["a", "b", "c"], tmp_path / "bad.png")


def test_binary_and_one_vs_rest_roc_curves(tmp_path: Path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p_positive = np.clip(0.3 * y + rng.uniform(0, 0.7, 200), 0, 1)
    _assert_png(plots.roc_curves(y, p_positive, ["NORMAL", "PNEUMONIA"], tmp_path / "roc.png"))

    y3 = rng.integers(0, 3, 300)
    p3 = rng.dirichlet([1, 1, 1], 300) + np.eye(3)[y3]
    p3 /= p3.sum(axis=1, keepdims=True)
    _assert_png(plots.roc_curves(y3, p3, ["a", "b", "c"], tmp_path / "roc_ovr.png"))
    with pytest.raises(ValueError, match="does not match"):
        plots.roc_curves(y3, p3, ["a", "b"], tmp_path / "bad.png")


def test_reliability_diagram_before_and_after_calibration(tmp_path: Path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.35 * y + rng.uniform(0, 0.65, 300), 0, 1)
    softened = 0.5 + (p - 0.5) * 0.6

    series = {"before": p, "after T": softened}
    _assert_png(plots.reliability_diagram(series, y, tmp_path / "reliability.png"))
    with pytest.raises(ValueError, match="at least one"):
        plots.reliability_diagram({}, y, tmp_path / "bad.png")
