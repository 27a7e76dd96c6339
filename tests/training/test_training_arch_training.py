"""training.experiments.arch_training: an original architecture trained end to end, exported at its own input
size, evaluated held out through the serving runtime, and documented by a card the service accepts."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

pytestmark = pytest.mark.training
pytest.importorskip("keras")
pytest.importorskip("tf2onnx", reason="tf2onnx (the training extra) is not installed")

from tests.support import synthetic_image  # noqa: E402
from training.experiments.arch_training import main, run  # noqa: E402
from training.datasets import Record  # noqa: E402
from training.export import PARITY_TOLERANCE  # noqa: E402
from training.splits import SplitRecord  # noqa: E402


def _tiny_pneumonia_split(root: Path) -> list[SplitRecord]:
    """4 patients per label and split; PNEUMONIA images are brighter so one epoch can learn a little."""
    split = []
    for part in ("train", "val", "test"):
        for label in ("NORMAL", "PNEUMONIA"):
            for index in range(4):
                path = root / part / label / f"{part}-{label}-{index}.jpeg"
                path.parent.mkdir(parents=True, exist_ok=True)
                image = synthetic_image("chest_xray", (160, 160), seed=hash((part, label, index)) % 1000)
                if label == "PNEUMONIA":
                    image = image.point(lambda v: min(255, v + 60))
                image.save(path)
                split.append(SplitRecord(Record(path, label, f"{part}{label}{index}"), part))
    return split


def test_pneumonia_cnn_is_trained_exported_at_150x150_evaluated_and_carded(tmp_path: Path, monkeypatch):
    from services.core.runtime import OnnxModel
    from services.pneumonia.spec import SPEC as PNEUMONIA
    from training import evaluate, metrics

    # 1000 bootstrap rounds take ~20 s whatever the number of images; 50 show the same wiring.
    monkeypatch.setattr(evaluate, "with_intervals", partial(metrics.with_intervals, rounds=50))
    split = _tiny_pneumonia_split(tmp_path / "data")
    out = tmp_path / "model"

    card = run("pneumonia", "pneumonia_cnn_5block_he", split, tmp_path / "data", out, epochs=1, batch_size=8)

    written = {p.name for p in out.iterdir()}
    assert {"model.onnx", "card.json", "card.md", "split.csv", "history.json"} <= written
    assert card["architecture"]["input"]["shape"] == ["N", 150, 150, 3]
    assert card["export"]["onnx_keras_parity_max_abs_diff"]["probabilities"] <= PARITY_TOLERANCE
    assert card["metrics"]["n"] == 8 and "value" in card["metrics"]["auc"]
    assert card["training"]["finetune"]["epochs_run"] == 1
    assert json.loads((out / "card.json").read_text())["name"] == "pneumonia-pneumonia_cnn_5block_he"
    # The service's runtime accepts the folder and reads its input size from the model.
    assert OnnxModel(replace(PNEUMONIA, model_dir=out), intra_op_threads=1).input_size == (150, 150)


@pytest.mark.parametrize("argv, message", [
    (["--task", "bone", "--arch", "bone_vgg_scratch"], "bone's shipped model is built by training.train"),
    (["--task", "skin", "--arch", "pneumonia_cnn_5block"], "is a pneumonia architecture, not skin"),
])
def test_tasks_and_architectures_that_cannot_ship_this_way_are_refused_before_training(
        argv, message, tmp_path, capsys):
    assert main([*argv, "--data", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
