"""The model card records calibration (T, ECE and NLL before and after, on validation and test) and
lists the PNGs next to the model, in card.json and card.md."""

from __future__ import annotations

import json
from pathlib import Path

from training import card as model_card
from training.datasets import Record
from training.splits import SplitRecord

REPORT_VAL = {"n": 4, "ece_before": 0.21, "ece_after": 0.04, "nll_before": 0.9, "nll_after": 0.3}
REPORT_TEST = {"n": 2, "ece_before": 0.25, "ece_after": 0.06, "nll_before": 1.1, "nll_after": 0.4}


def _build_kwargs(tmp_path: Path, finetune: dict | None = None) -> dict:
    split = [SplitRecord(Record(tmp_path / f"img{i}.jpeg", label, f"person{i}"), name)
             for i, (label, name) in enumerate([("NORMAL", "train"), ("PNEUMONIA", "train"),
                                                 ("NORMAL", "val"), ("PNEUMONIA", "test")])]
    metric = {"value": 0.5, "ci95_low": 0.4, "ci95_high": 0.6}
    return dict(
        task="pneumonia", split=split, validation={"accuracy": 1.0},
        test={"task": "pneumonia", "n": 2, "labels": ["NORMAL", "PNEUMONIA"], "accuracy": metric,
              "confusion_matrix": [[1, 0], [1, 0]]},
        heads={"probabilities": {"l2": 0.0}}, finetune=finetune, parameters=10, timing={"a_seconds": 1.0},
        augmentation="none", parity={"probabilities": 1e-6}, parity_images=2,
        interface={"outputs": [("probabilities", ["N", 2], "tensor(float)")]}, model_bytes=100,
        data_root=tmp_path)


def _card(tmp_path: Path, finetune: dict | None = None, **extra) -> dict:
    return model_card.build(**_build_kwargs(tmp_path, finetune), **extra)


def test_calibration_and_plots_are_in_card_json_and_card_md(tmp_path: Path):
    calibration = {"probabilities": {"temperature": 2.345, "validation": REPORT_VAL, "test": REPORT_TEST}}
    curves = {"training_curves.png": "probabilities head (refit on pooled features)"}

    card = _card(tmp_path, calibration=calibration, curves=curves)
    model_card.write(card, tmp_path)

    stored = json.loads((tmp_path / "card.json").read_text(encoding="utf-8"))
    assert stored["calibration"]["heads"] == calibration
    assert stored["calibration"]["ece_bins"] == 15
    assert "validation" in stored["calibration"]["method"]
    assert stored["plots"]["training_curves"] == curves
    markdown = (tmp_path / "card.md").read_text(encoding="utf-8")
    assert "## Calibration" in markdown
    assert "| probabilities | 2.345 | validation | 4 | 0.2100 | 0.0400 | 0.9000 | 0.3000 |" in markdown
    assert "| probabilities | 2.345 | test | 2 | 0.2500 | 0.0600 | 1.1000 | 0.4000 |" in markdown
    for png in ("training_curves.png", "confusion_matrix.png", "roc.png", "reliability.png"):
        assert f"`{png}`" in markdown


def test_a_card_from_before_calibration_still_renders(tmp_path: Path):
    card = _card(tmp_path)
    del card["plots"]
    (tmp_path / "card.json").write_text(json.dumps(card), encoding="utf-8")

    model_card.refresh_text(tmp_path)

    markdown = (tmp_path / "card.md").read_text(encoding="utf-8")
    assert "## Calibration" not in markdown and "## Limitations" in markdown


def test_the_backbone_line_says_whether_batchnorm_was_trained(tmp_path: Path):
    trained = _card(tmp_path, finetune={"blocks": 16, "batchnorm": "BatchNorm trained"})
    older = _card(tmp_path, finetune={"blocks": 10})      # a run from before --train-batchnorm

    assert trained["architecture"]["backbone"].endswith("last 16 block(s) + Conv_1 fine-tuned (BatchNorm trained)")
    assert older["architecture"]["backbone"].endswith("last 10 block(s) + Conv_1 fine-tuned (BatchNorm frozen)")


def test_the_optimizer_note_gives_the_learning_rates_the_fine_tuning_used():
    assert model_card.optimizer_text(None) == "Adam; heads: lr 1e-3, early stopping on validation loss"
    # --finetune-blocks (heads.py) records its rate at the top level
    assert "fine-tuning: lr 1e-4, the epoch" in model_card.optimizer_text({"learning_rate": 1e-4})
    # an end-to-end run continued from another: oldest first
    continued = {"settings": {"learning_rate": 5e-5},
                 "previous_runs": [{"settings": {"learning_rate": 1e-4}}, {"settings": {"learning_rate": 2.5e-4}}]}
    assert "fine-tuning: lr 1e-4, then 2.5e-4, then 5e-5 (continued runs)" in model_card.optimizer_text(continued)
    cosine = {"settings": {"learning_rate": 1e-4, "schedule": "cosine", "epochs": 10}}
    assert ("fine-tuning: lr 1e-4 decayed along a cosine to 0 over 10 epochs,"
            in model_card.optimizer_text(cosine))


def test_the_card_states_the_exported_input_size_and_keeps_it_when_its_text_is_refreshed(tmp_path: Path):
    card = model_card.build(**{**_build_kwargs(tmp_path), "interface": {
        "inputs": [("input", ["N", 288, 288, 3], "tensor(float)")],
        "outputs": [("probabilities", ["N", 2], "tensor(float)"), ("cam", ["N", 9, 9, 2], "tensor(float)")]}})

    assert card["architecture"]["input"]["shape"] == ["N", 288, 288, 3]
    assert "288x288" in card["architecture"]["backbone"] and "9x9x1280" in card["architecture"]["cam"]
    assert any("resized to 288x288" in item for item in card["limitations"])
    model_card.write(card, tmp_path)
    model_card.refresh_text(tmp_path)
    refreshed = json.loads((tmp_path / "card.json").read_text(encoding="utf-8"))
    assert any("resized to 288x288" in item for item in refreshed["limitations"])
    assert not any("224x224" in item for item in refreshed["limitations"])
