"""training.experiments.compare trains an original architecture on the task's own split and prints
one table row."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("keras")

from training.experiments import compare  # noqa: E402
from training.tasks import load_split  # noqa: E402


def _kermany_tree(root: Path, patients_per_class: int = 20) -> Path:
    """Kermany layout, two views per patient: NORMAL patients dark, PNEUMONIA patients bright."""
    for n in range(patients_per_class):
        normal = root / "chest_xray" / "train" / "NORMAL"
        pneumonia = root / "chest_xray" / "train" / "PNEUMONIA"
        normal.mkdir(parents=True, exist_ok=True)
        pneumonia.mkdir(parents=True, exist_ok=True)
        for view in (1, 2):
            Image.new("L", (32, 32), 40 + n).save(normal / f"IM-{n:04d}-000{view}.jpeg")
            Image.new("L", (32, 32), 180 + n).save(pneumonia / f"person{n}_bacteria_{view}.jpeg")
    return root


def test_prints_one_row_per_architecture_trained_on_the_tasks_split(tmp_path: Path, capsys):
    root = _kermany_tree(tmp_path)

    assert compare.main(["--task", "pneumonia", "--arch", "pneumonia_cnn_5block", "--data", str(root),
                         "--epochs", "1", "--max-train", "16", "--batch-size", "8"]) == 0

    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[:2] == [compare.HEADER, compare.RULE]
    cells = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert cells[:4] == ["pneumonia_cnn_5block", "pneumonia", "16", "1"]
    assert all(0.0 <= float(value) <= 1.0 for value in cells[4:7])
    assert cells[7] == "2,314,337"
    # Minutes to one decimal: a 16-image epoch on a fast CPU prints 0.0 (compare() is timed below).
    assert float(cells[8]) >= 0 and float(cells[9]) > 0


def test_scores_only_validation_rows_and_trains_only_on_training_rows(tmp_path: Path):
    split = load_split("pneumonia", _kermany_tree(tmp_path))
    train = sum(item.split == "train" for item in split)

    row = compare.compare("pneumonia_cnn_5block", "pneumonia", split, epochs=1, batch_size=16)

    assert row.train_images == train < len(split)
    assert row.parameters == 2_314_337
    assert row.training_minutes > 0 and row.images_per_second > 0


def test_refuses_a_transfer_model_without_its_weights_and_another_tasks_model(tmp_path: Path):
    with pytest.raises(ValueError, match="--arch-weights"):
        compare.compare("skin_inception_resnet_v2", "skin", [], epochs=1)
    with pytest.raises(ValueError, match="is a skin architecture, not pneumonia"):
        compare.compare("skin_cnn_75x100", "pneumonia", [], epochs=1)
