"""MURA v1.1 in its own layout: records per view, study-level probability = mean over views,
Cohen's kappa per study type and overall (as in the MURA paper); clear errors on a wrong layout;
the bone task's split of MURA by patient, and the study-level figures `training.evaluate` reports."""

from __future__ import annotations

from pathlib import Path

import json
from collections import defaultdict

import numpy as np
import onnx
import pytest
from PIL import Image

from training.datasets import DatasetLayoutError
from training.mura import as_records, read_labeled_studies, read_mura_images, study_kappa, study_predictions
from training.tasks import load_split, uses_mura

# (study type, patient, study folder, P(abnormal) of each view the "model" gives)
VALID_STUDIES = [
    ("ELBOW", "patient11001", "study1_positive", [0.9, 0.5]),        # mean .7 -> abnormal (right)
    ("ELBOW", "patient11002", "study1_negative", [0.2, 0.4, 0.3]),   # mean .3 -> normal (right)
    ("ELBOW", "patient11003", "study1_positive", [0.2, 0.6]),        # mean .4 -> normal (wrong; max: right)
    ("ELBOW", "patient11004", "study1_negative", [0.1]),             # normal (right)
    ("WRIST", "patient11001", "study1_positive", [0.8, 0.6]),        # mean .7 -> abnormal (right)
    ("WRIST", "patient11005", "study2_negative", [0.4, 0.8]),        # mean .6 -> abnormal (wrong)
]


def _study(split: str, study_type: str, patient: str, folder: str) -> str:
    return f"MURA-v1.1/{split}/XR_{study_type}/{patient}/{folder}"


def _write_mura(root: Path, split: str = "valid", studies=VALID_STUDIES) -> Path:
    """A small MURA-layout tree with real (tiny, grayscale) PNG views and both CSVs."""
    base = root / "MURA-v1.1"
    image_lines, study_lines = [], []
    for study_type, patient, folder, views in studies:
        study = _study(split, study_type, patient, folder)
        (root / study).mkdir(parents=True, exist_ok=True)
        for n in range(1, len(views) + 1):
            Image.new("L", (32, 32), color=40 * n).save(root / study / f"image{n}.png")
            image_lines.append(f"{study}/image{n}.png")
        study_lines.append(f"{study}/,{1 if folder.endswith('positive') else 0}")
    (base / f"{split}_image_paths.csv").write_text("\n".join(image_lines) + "\n", encoding="utf-8")
    (base / f"{split}_labeled_studies.csv").write_text("\n".join(study_lines) + "\n", encoding="utf-8")
    return root


def _view_probabilities() -> np.ndarray:
    return np.array([p for *_, views in VALID_STUDIES for p in views])


def test_reads_every_view_with_its_study_patient_type_and_label(tmp_path: Path):
    images = read_mura_images(_write_mura(tmp_path), "valid")

    assert len(images) == 12
    first = images[0]
    assert first.path == tmp_path / "MURA-v1.1/valid/XR_ELBOW/patient11001/study1_positive/image1.png"
    assert first.path.is_file()
    assert (first.label, first.y, first.patient_id) == ("ABNORMAL", 1, "patient11001")
    assert first.study_type == "ELBOW"
    assert first.study_id == "MURA-v1.1/valid/XR_ELBOW/patient11001/study1_positive"
    assert len({image.study_id for image in images}) == 6
    assert [image.label for image in images if image.patient_id == "patient11002"] == ["NORMAL"] * 3
    # the root may also be MURA-v1.1/ itself
    assert read_mura_images(tmp_path / "MURA-v1.1", "valid") == images
    records = as_records(images)
    assert (records[0].path, records[0].label, records[0].group) == (first.path, "ABNORMAL", "patient11001")


def test_study_probability_is_the_mean_over_its_views(tmp_path: Path):
    images = read_mura_images(_write_mura(tmp_path), "valid")

    studies = {s.study_id: s for s in study_predictions(images, _view_probabilities())}

    elbow_3 = studies[_study("valid", "ELBOW", "patient11003", "study1_positive")]
    assert elbow_3.probability == pytest.approx(0.4)
    assert (elbow_3.views, elbow_3.y, elbow_3.predicted) == (2, 1, 0)
    elbow_2 = studies[_study("valid", "ELBOW", "patient11002", "study1_negative")]
    assert elbow_2.probability == pytest.approx(0.3)
    assert studies[_study("valid", "WRIST", "patient11005", "study2_negative")].predicted == 1
    # (n, 2) softmax probabilities give the same studies
    two_column = np.stack([1 - _view_probabilities(), _view_probabilities()], axis=1)
    assert study_predictions(images, two_column) == list(studies.values())


def test_kappa_per_study_type_and_overall_match_the_hand_computed_values(tmp_path: Path):
    images = read_mura_images(_write_mura(tmp_path), "valid")

    kappa = study_kappa(study_predictions(images, _view_probabilities()))

    # ELBOW: y 1,0,1,0 vs predicted 1,0,0,0: p_o = 3/4, p_e = .5*.25 + .5*.75 = .5 -> (.75-.5)/.5 = .5
    # WRIST: y 1,0 vs predicted 1,1: p_o = 1/2, p_e = .5*1 + .5*0 = .5 -> 0
    # overall: 6 studies, 4 right, p_e = .5*.5 + .5*.5 = .5 -> (2/3 - .5)/.5 = 1/3
    assert kappa == pytest.approx({"ELBOW": 0.5, "WRIST": 0.0, "overall": 1 / 3})


def test_probabilities_must_match_the_images(tmp_path: Path):
    images = read_mura_images(_write_mura(tmp_path), "valid")

    with pytest.raises(ValueError, match="one P\\(abnormal\\) per image"):
        study_predictions(images, np.zeros(5))


def test_a_missing_csv_is_named(tmp_path: Path):
    _write_mura(tmp_path)
    (tmp_path / "MURA-v1.1" / "valid_labeled_studies.csv").unlink()

    with pytest.raises(DatasetLayoutError, match="valid_labeled_studies.csv"):
        read_mura_images(tmp_path, "valid")
    with pytest.raises(DatasetLayoutError, match="train_labeled_studies.csv"):
        read_labeled_studies(tmp_path, "train")
    with pytest.raises(DatasetLayoutError, match="MURA folder not found"):
        read_mura_images(tmp_path / "elsewhere", "valid")


def test_an_unknown_or_contradicting_label_is_refused(tmp_path: Path):
    _write_mura(tmp_path)
    listing = tmp_path / "MURA-v1.1" / "valid_labeled_studies.csv"
    original = listing.read_text(encoding="utf-8")

    listing.write_text(original.replace("study1_negative/,0", "study1_negative/,2", 1), encoding="utf-8")
    with pytest.raises(DatasetLayoutError, match="unknown study label '2'"):
        read_mura_images(tmp_path, "valid")

    listing.write_text(original.replace("study1_negative/,0", "study1_negative/,1", 1), encoding="utf-8")
    with pytest.raises(DatasetLayoutError, match="contradicts its folder name"):
        read_mura_images(tmp_path, "valid")


def test_an_unlabelled_study_a_missing_view_or_a_foreign_path_is_refused(tmp_path: Path):
    _write_mura(tmp_path)
    base = tmp_path / "MURA-v1.1"
    listing = base / "valid_image_paths.csv"
    original = listing.read_text(encoding="utf-8")

    (tmp_path / _study("valid", "ELBOW", "patient11004", "study1_negative") / "image1.png").unlink()
    with pytest.raises(DatasetLayoutError, match="image not found"):
        read_mura_images(tmp_path, "valid")
    assert len(read_mura_images(tmp_path, "valid", check_files=False)) == 12

    unlabelled = "MURA-v1.1/valid/XR_HAND/patient11009/study1_negative/image1.png\n"
    listing.write_text(original + unlabelled, encoding="utf-8")
    with pytest.raises(DatasetLayoutError, match="not in valid_labeled_studies.csv"):
        read_mura_images(tmp_path, "valid", check_files=False)

    knee = "MURA-v1.1/valid/XR_KNEE/patient11009/study1_negative/image1.png\n"
    listing.write_text(original + knee, encoding="utf-8")
    with pytest.raises(DatasetLayoutError, match="unknown study type XR_KNEE"):
        read_mura_images(tmp_path, "valid", check_files=False)

    listing.write_text(original + "images/elsewhere/image1.png\n", encoding="utf-8")
    with pytest.raises(DatasetLayoutError, match=r"valid_image_paths.csv:13: .* is not MURA-v1.1/valid"):
        read_mura_images(tmp_path, "valid", check_files=False)
    with pytest.raises(ValueError, match="unknown MURA split"):
        read_mura_images(tmp_path, "test")


# 30 training patients over three study types; patient 7n has a second study (another type), so a
# patient-level split must keep both studies together.
TRAIN_STUDIES = [
    (("ELBOW", "WRIST", "HAND")[n % 3], f"patient{n:05d}", f"study1_{'positive' if n % 2 else 'negative'}",
     [0.5] * (1 + n % 3))
    for n in range(1, 31)
] + [("SHOULDER", f"patient{n:05d}", "study2_positive", [0.5]) for n in range(7, 31, 7)]


def test_bone_splits_mura_train_by_patient_and_holds_out_mura_valid(tmp_path: Path):
    _write_mura(tmp_path, "train", TRAIN_STUDIES)
    _write_mura(tmp_path, "valid")

    split = load_split("bone", tmp_path)

    split_of_patient = defaultdict(set)
    for item in split:
        split_of_patient[item.record.group].add(item.split)
    assert all(len(splits) == 1 for splits in split_of_patient.values())          # patient-disjoint
    assert {item.split for item in split} == {"train", "val", "test"}
    test_paths = sorted(item.record.path for item in split if item.split == "test")
    assert test_paths == sorted(image.path for image in read_mura_images(tmp_path, "valid"))
    assert len(split) - len(test_paths) == len(read_mura_images(tmp_path, "train"))
    assert {item.record.label for item in split} == {"NORMAL", "ABNORMAL"}      # no KL grades on MURA


def test_bone_trains_on_mura_given_the_mura_folder_itself(tmp_path: Path):
    _write_mura(tmp_path, "train", TRAIN_STUDIES)
    _write_mura(tmp_path, "valid")

    assert uses_mura("bone", tmp_path / "MURA-v1.1")
    split = load_split("bone", tmp_path / "MURA-v1.1")
    assert sorted(item.record.path for item in split) == sorted(item.record.path for item in load_split("bone", tmp_path))


def _brightness_model() -> onnx.ModelProto:
    """A stand-in model with P(abnormal) = sigmoid(10 * (mean input + 0.5)). On the fixture's grey views
    (image n has grey level 40n, input 40n/127.5 - 1): view 1 -> 0.13, view 2 -> 0.78, view 3 -> 0.99."""
    from onnx import TensorProto, helper, numpy_helper

    constants = {"axes": np.array([1, 2, 3], np.int64), "offset": np.array(0.5, np.float32),
                 "scale": np.array(10.0, np.float32), "zero": np.array(0.0, np.float32),
                 "column": np.array([1], np.int64)}
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=0),
        helper.make_node("Add", ["mean", "offset"], ["shifted"]),
        helper.make_node("Mul", ["shifted", "scale"], ["logit"]),
        helper.make_node("Unsqueeze", ["logit", "column"], ["abnormal"]),
        helper.make_node("Mul", ["abnormal", "zero"], ["normal"]),
        helper.make_node("Concat", ["normal", "abnormal"], ["logits"], axis=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "brightness", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 224, 224, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        initializer=[numpy_helper.from_array(value, name) for name, value in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model


def test_evaluate_reports_study_probability_as_the_mean_of_views_and_kappa_per_study_type(tmp_path, capsys):
    from training.evaluate import main

    _write_mura(tmp_path, "valid")
    onnx.save(_brightness_model(), tmp_path / "model.onnx")

    code = main(["--task", "bone", "--data", str(tmp_path), "--model", str(tmp_path / "model.onnx")])

    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 12 and result["labels"] == ["NORMAL", "ABNORMAL"]
    assert "kl_grade_accuracy" not in result
    # Study means (views 0.13 / 0.78 / 0.99): ELBOW 11001 (1) .46 -> 0, 11002 (0) .63 -> 1,
    # 11003 (1) .46 -> 0, 11004 (0) .13 -> 0; WRIST 11001 (1) .46 -> 0, 11005 (0) .46 -> 0.
    # (The max over views would call 11001 and 11003 abnormal instead.)
    assert result["studies"] == 6
    assert result["study_accuracy"] == pytest.approx(2 / 6, abs=1e-4)
    # ELBOW: y 1,0,1,0 vs 0,1,0,0: p_o = 1/4, p_e = .5*.25 + .5*.75 = .5 -> -0.5
    # WRIST: y 1,0 vs 0,0: p_o = 1/2, p_e = .5 -> 0; overall: p_o = 2/6, p_e = .5*(1/6) + .5*(5/6) -> -1/3
    assert result["study_kappa"] == pytest.approx({"ELBOW": -0.5, "WRIST": 0.0, "overall": -1 / 3}, abs=1e-4)


def test_evaluate_reads_mura_with_the_strict_reader(tmp_path, capsys):
    """The labelled-studies file is part of MURA's layout: evaluating without it is an error."""
    from training.evaluate import main

    _write_mura(tmp_path, "valid")
    (tmp_path / "MURA-v1.1" / "valid_labeled_studies.csv").unlink()
    onnx.save(_brightness_model(), tmp_path / "model.onnx")

    assert main(["--task", "bone", "--data", str(tmp_path), "--model", str(tmp_path / "model.onnx")]) == 2
    assert "valid_labeled_studies.csv" in capsys.readouterr().err
