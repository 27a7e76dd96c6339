"""A shipped model's held-out plots are drawn from its own split.csv test rows."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from services.bone.spec import SPEC as BONE
from services.pneumonia.spec import SPEC as PNEUMONIA
from tests.serving_models import write_fixture_model
from tests.support import synthetic_image
from training.model_plots import write_plots


def _split_csv(model_dir: Path, root: Path, labels: list[str], split: str = "test") -> None:
    with (model_dir / "split.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group", "split"])
        for index, label in enumerate(labels):
            name = f"img{index}.png"
            synthetic_image("chest_xray", seed=index).save(root / name)
            writer.writerow([name, label, f"patient{index}", split])


def _is_png(path: Path) -> bool:
    with Image.open(path) as image:
        return image.format == "PNG" and image.size[0] > 100


def test_binary_model_gets_confusion_roc_and_reliability_plots(tmp_path: Path) -> None:
    spec = write_fixture_model(PNEUMONIA, tmp_path / "model")
    _split_csv(spec.model_dir, tmp_path, ["NORMAL", "PNEUMONIA"] * 4)

    written = write_plots(spec, tmp_path)

    assert [p.name for p in written] == ["confusion_matrix.png", "roc.png", "reliability.png"]
    assert all(p.parent == spec.model_dir and _is_png(p) for p in written)


def test_bone_model_also_gets_its_kl_grade_confusion_matrix(tmp_path: Path) -> None:
    spec = write_fixture_model(BONE, tmp_path / "model")
    _split_csv(spec.model_dir, tmp_path, ["0", "1", "2", "3", "4", "0", "2", "4"])

    written = write_plots(spec, tmp_path)

    assert "kl_confusion_matrix.png" in [p.name for p in written]
    assert all(_is_png(p) for p in written)


def test_a_split_without_test_rows_is_refused(tmp_path: Path) -> None:
    spec = write_fixture_model(PNEUMONIA, tmp_path / "model")
    _split_csv(spec.model_dir, tmp_path, ["NORMAL", "PNEUMONIA"], split="train")

    with pytest.raises(ValueError, match="no rows in split 'test'"):
        write_plots(spec, tmp_path)
