"""`python -m training.evaluate`: ONNX Runtime + shared preprocessing on a folder in the dataset's layout,
one JSON object as the last line; and the metrics and intervals it reports."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tests.serving_models import build_model
from tests.support import synthetic_image
from training.evaluate import main, records_from_split_csv, score_outputs
from training.metrics import binary_metrics, multiclass_metrics, point_values, with_intervals
from training.tasks import SPECS


def _kermany_test_tree(root):
    folder = root / "chest_xray" / "test"
    for label in ("NORMAL", "PNEUMONIA"):
        (folder / label).mkdir(parents=True)
    for i in range(4):
        synthetic_image("chest_xray", seed=i).save(folder / "NORMAL" / f"IM-000{i}-0001.jpeg")
        synthetic_image("chest_xray", seed=10 + i).save(folder / "PNEUMONIA" / f"person{i}_virus_{i}.jpeg")


def test_pneumonia_evaluation_prints_one_json_object_last(tmp_path, capsys):
    _kermany_test_tree(tmp_path)
    onnx.save(build_model(2), tmp_path / "model.onnx")

    code = main(["--task", "pneumonia", "--data", str(tmp_path), "--model", str(tmp_path / "model.onnx")])

    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["task"] == "pneumonia" and result["n"] == 8
    assert result["labels"] == ["NORMAL", "PNEUMONIA"]
    for key in ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity", "f1"):
        assert 0.0 <= result[key] <= 1.0
    assert -1.0 <= result["kappa"] <= 1.0
    assert 0.0 <= result["ece"] <= 1.0 and result["nll"] >= 0.0
    assert np.array(result["confusion_matrix"]).sum() == 8


def test_bone_on_knee_data_excludes_kl1_and_grades(tmp_path, capsys):
    for grade, patient in (("0", "100"), ("1", "101"), ("2", "102"), ("3", "103"), ("4", "104")):
        folder = tmp_path / "knee_kl" / "val" / grade
        folder.mkdir(parents=True)
        synthetic_image("bone_xray", seed=int(grade)).save(folder / f"{patient}L.jpg")
    onnx.save(build_model(2, kl_grades=True), tmp_path / "model.onnx")

    code = main(["--task", "bone", "--data", str(tmp_path), "--model", str(tmp_path / "model.onnx")])

    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 4 and result["n_kl"] == 5 and result["kl_excluded_from_binary"] == 1
    assert result["labels"] == ["NORMAL", "ABNORMAL"]
    assert 0.0 <= result["kl_grade_accuracy"] <= 1.0
    assert np.array(result["kl_confusion_matrix"]).sum() == 5


def test_a_file_that_is_no_model_or_lacks_the_kl_head_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    for grade in "01234":
        folder = tmp_path / "knee_kl" / "val" / grade
        folder.mkdir(parents=True)
        synthetic_image("bone_xray", seed=int(grade)).save(folder / f"10{grade}L.jpg")
    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    onnx.save(build_model(2), tmp_path / "binary_only.onnx")       # a bone model trained without KL grades

    for model, words in [("broken.onnx", "is not a model this runtime can serve"),
                         ("binary_only.onnx", "has no output kl_probabilities")]:
        code = main(["--task", "bone", "--data", str(tmp_path), "--model", str(tmp_path / model)])
        assert code == 2
        assert words in capsys.readouterr().err


def test_wrong_layout_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    onnx.save(build_model(2), tmp_path / "model.onnx")

    code = main(["--task", "pneumonia", "--data", str(tmp_path), "--model", str(tmp_path / "model.onnx")])

    assert code == 2
    assert "'test' split" in capsys.readouterr().err


def test_perfect_binary_predictions_score_one_with_a_tight_interval():
    y = np.array([0, 0, 1, 1, 1, 0] * 10)
    p = np.stack([1 - y, y], axis=1).astype(float)
    groups = [f"p{i // 2}" for i in range(len(y))]

    result = with_intervals(binary_metrics(), y, p, groups, rounds=50)

    for name in ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity", "f1", "kappa"):
        assert result[name] == {"value": 1.0, "ci95_low": 1.0, "ci95_high": 1.0}


def test_multiclass_metrics_and_intervals_cover_the_value():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    p = rng.dirichlet([1, 1, 1], 300)
    p[np.arange(300), y] += 0.5          # informative but imperfect
    p /= p.sum(axis=1, keepdims=True)
    metrics = multiclass_metrics(["a", "b", "c"], sensitivity_of="c")

    result = with_intervals(metrics, y, p, [str(i) for i in range(300)], rounds=100)

    assert set(result) == {"accuracy", "balanced_accuracy", "auc", "macro_f1", "ece", "nll", "c_sensitivity"}
    for value in result.values():
        assert value["ci95_low"] <= value["value"] <= value["ci95_high"]
    assert 0.6 < result["auc"]["value"] < 1.0


def test_macro_auc_ranks_each_class_by_its_own_probability_also_when_a_class_is_absent():
    """With every class present it is sklearn's one-vs-rest macro AUC; with one absent (a bootstrap
    resample, a small set), the mean of the present classes' AUCs on the model's own probabilities,
    not on probabilities renormalised over the present classes."""
    import sklearn.metrics as skm

    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.ones(4), size=400)
    y = rng.integers(0, 4, 400)
    auc = multiclass_metrics(["a", "b", "c", "d"])["auc"]
    assert auc(y, p) == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))

    y[y == 2] = 0
    expected = np.mean([skm.roc_auc_score(y == k, p[:, k]) for k in (0, 1, 3)])
    assert auc(y, p) == pytest.approx(expected)


def test_skin_split_without_a_split_csv_is_refused_rather_than_scoring_every_image(tmp_path, capsys):
    # HAM10000 has no split folders: "--split test" alone would score the training images too.
    onnx.save(build_model(7), tmp_path / "model.onnx")

    code = main(["--task", "skin", "--data", str(tmp_path), "--split", "test",
                 "--model", str(tmp_path / "model.onnx")])

    assert code == 2
    assert "HAM10000 has no split folders: pass --split-csv" in capsys.readouterr().err


def test_undefined_metrics_are_nan_in_python_and_null_in_the_json(tmp_path, capsys):
    folder = tmp_path / "chest_xray" / "test"
    (folder / "NORMAL").mkdir(parents=True)
    (folder / "PNEUMONIA").mkdir()
    for i in range(3):
        synthetic_image("chest_xray", seed=i).save(folder / "NORMAL" / f"IM-000{i}-0001.jpeg")
    onnx.save(build_model(2), tmp_path / "model.onnx")

    code = main(["--task", "pneumonia", "--data", str(tmp_path), "--model", str(tmp_path / "model.onnx")])

    assert code == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    # No pneumonia in the set: its sensitivity and the AUC do not exist; they are not 0.
    assert result["sensitivity"] is None and result["auc"] is None
    assert result["specificity"] is not None and result["n"] == 3


def test_a_set_with_no_positive_case_has_no_sensitivity_and_its_interval_ignores_such_resamples():
    values = point_values(binary_metrics(), np.array([0, 0]), np.array([[0.9, 0.1], [0.8, 0.2]]))
    assert np.isnan(values["sensitivity"]) and np.isnan(values["auc"]) and np.isnan(values["f1"])

    # One positive among 40 groups: many resamples lack it. They must not count as sensitivity 0.
    y = np.array([1] + [0] * 39)
    p = np.stack([1 - y, y], axis=1).astype(float)
    result = with_intervals(binary_metrics(), y, p, [str(i) for i in range(40)], rounds=200)
    assert result["sensitivity"] == {"value": 1.0, "ci95_low": 1.0, "ci95_high": 1.0}


def test_macro_f1_skips_a_class_absent_from_labels_and_predictions_and_mel_sensitivity_needs_a_melanoma():
    labels = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    y = np.array([0, 1, 2, 4, 5, 6])                # no df
    metrics = multiclass_metrics(labels, sensitivity_of="mel")

    perfect = point_values(metrics, y, np.eye(7)[y])
    assert perfect["macro_f1"] == 1.0 and perfect["accuracy"] == 1.0

    no_mel = y[y != 4]
    assert np.isnan(point_values(metrics, no_mel, np.eye(7)[no_mel])["mel_sensitivity"])


def test_only_doubtful_knees_is_a_clear_error(tmp_path, capsys):
    folder = tmp_path / "knee_kl" / "val"
    for grade in ("0", "1", "2", "3", "4"):
        (folder / grade).mkdir(parents=True)
    synthetic_image("bone_xray", seed=1).save(folder / "1" / "100L.jpg")
    onnx.save(build_model(2, kl_grades=True), tmp_path / "model.onnx")

    code = main(["--task", "bone", "--data", str(tmp_path), "--model", str(tmp_path / "model.onnx")])

    assert code == 2
    assert "KL1 ('doubtful') images are excluded" in capsys.readouterr().err


def test_a_split_csv_row_with_an_unknown_bone_grade_is_refused(tmp_path):
    (tmp_path / "split.csv").write_text("path,label,group,split\nknee_kl/val/5/1L.jpg,5,1,test\n")
    records = records_from_split_csv(tmp_path / "split.csv", tmp_path, "test")

    with pytest.raises(ValueError, match="unknown bone label '5'"):
        score_outputs("bone", records, {"probabilities": np.array([[0.5, 0.5]])})


def test_training_decodes_a_16_bit_or_rotated_image_as_serving_does(tmp_path):
    """A 16-bit PNG (MURA-style radiograph) or an EXIF-rotated photo must not train on other pixels
    than the service would see."""
    from PIL import Image

    from training.features import load_image
    from training.finetune import load_pixels
    from training.inference import serving_input

    ramp = np.tile(np.linspace(0, 4000, 96, dtype=np.uint16), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "sixteen_bit.png")
    photo = synthetic_image("skin_lesion", seed=3)
    exif = Image.Exif()
    exif[0x0112] = 6                                           # rotate 90 degrees clockwise
    photo.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)

    for name in ("sixteen_bit.png", "rotated.jpg"):
        served = serving_input(tmp_path / name, (224, 224))
        assert np.abs(load_image(tmp_path / name) - served).max() < 1e-6, name
        pixels = load_pixels([tmp_path / name], (224, 224))[0].astype(np.float32) / 127.5 - 1
        assert np.abs(pixels - served).max() < 1e-6, name


def test_a_model_of_another_task_is_refused_not_scored(tmp_path, capsys):
    """A 7-class skin model run as pneumonia must not print plausible-looking figures."""
    _kermany_test_tree(tmp_path)
    onnx.save(build_model(7), tmp_path / "model.onnx")     # no card beside it: caught by its classes
    code = main(["--task", "pneumonia", "--data", str(tmp_path), "--model", str(tmp_path / "model.onnx")])
    assert code == 2 and "gives 7 classes; a pneumonia model gives 2" in capsys.readouterr().err

    shipped_skin = SPECS["skin"].model_path                  # its card says skin
    code = main(["--task", "pneumonia", "--data", str(tmp_path), "--model", str(shipped_skin)])
    assert code == 2 and "is a 'skin' model" in capsys.readouterr().err


def test_images_are_decoded_as_serving_decodes_them(tmp_path):
    """A 16-bit PNG is stretched to 8 bits as a model service does, not clipped to white."""
    from PIL import Image

    from services.core.imaging import read_image
    from services.core.preprocessing import to_model_input
    from training.inference import serving_input

    ramp = np.tile(np.linspace(0, 4095, 256).astype(np.uint16), (256, 1))
    path = tmp_path / "radiograph.png"
    Image.fromarray(ramp).save(path)
    expected = to_model_input(read_image(path.read_bytes()).image, (224, 224))
    assert np.array_equal(serving_input(path, (224, 224)), expected)
    assert (expected > 0.99).mean() < 0.1      # a ramp, not a saturated image


def _model_beside_its_split(tmp_path, rows: str):
    """A pneumonia model in tmp_path/model with a split.csv of `rows` (path,label,group,split lines)."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    onnx.save(build_model(2), model_dir / "model.onnx")
    (model_dir / "split.csv").write_text("path,label,group,split\n" + rows, encoding="utf-8")
    return model_dir / "model.onnx"


def test_images_the_model_trained_or_validated_on_are_refused_unless_asked_for(tmp_path, capsys):
    """Scoring a model on its own training rows (e.g. the whole HAM10000 folder) is no held-out
    figure: refused by default, with the command that scores its held-out rows."""
    _kermany_test_tree(tmp_path)
    model = _model_beside_its_split(tmp_path, "chest_xray/test/NORMAL/IM-0000-0001.jpeg,NORMAL,IM-0000,train\n"
                                              "chest_xray/test/NORMAL/IM-0001-0001.jpeg,NORMAL,IM-0001,test\n")
    args = ["--task", "pneumonia", "--data", str(tmp_path), "--model", str(model)]

    assert main(args) == 2
    error = capsys.readouterr().err
    assert "1 of these 8 images trained or validated this model" in error and "--split-csv" in error
    assert main([*args, "--allow-seen"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 8


def test_images_of_a_patient_the_model_learned_from_are_scored_with_a_warning(tmp_path, capsys):
    """Another image of a training patient is not the same image, but the figure may be optimistic."""
    _kermany_test_tree(tmp_path)
    model = _model_beside_its_split(tmp_path,
                                    "chest_xray/train/PNEUMONIA/person1_bacteria_9.jpeg,PNEUMONIA,person1,train\n")

    assert main(["--task", "pneumonia", "--data", str(tmp_path), "--model", str(model)]) == 0
    captured = capsys.readouterr()
    assert "warning: 1 of these 8 images belong to 1 patients or lesions" in captured.err
    assert "'person1'" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["n"] == 8


def test_an_exact_tie_is_decided_as_serving_decides_it_the_negative_class():
    """Serving takes the argmax, which gives index 0 on a tie: the reported figures must agree."""
    y = np.array([0, 1])
    tie = np.array([[0.5, 0.5], [0.5, 0.5]])
    values = point_values(binary_metrics(), y, tie)
    assert values["specificity"] == 1.0 and values["sensitivity"] == 0.0
    assert values["accuracy"] == 0.5


def test_seen_images_are_recognised_however_the_data_root_is_given(tmp_path, capsys):
    """--data may name the dataset's own folder (chest_xray/) instead of the root that holds it;
    the split.csv rows (relative to that root) must still match."""
    _kermany_test_tree(tmp_path)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    onnx.save(build_model(2), model_dir / "model.onnx")
    (model_dir / "split.csv").write_text(
        "path,label,group,split\nchest_xray/test/NORMAL/IM-0000-0001.jpeg,NORMAL,IM-0000,train\n", encoding="utf-8")
    for data in (tmp_path, tmp_path / "chest_xray"):
        code = main(["--task", "pneumonia", "--data", str(data), "--model", str(model_dir / "model.onnx")])
        assert code == 2, data
        assert "1 of these 8 images trained or validated" in capsys.readouterr().err


def test_ece_is_the_gap_between_confidence_and_accuracy_over_15_bins_and_nll_the_mean_log_loss():
    # 10 answers at 0.95 confidence of which 5 are right: one bin, gap 0.45.
    y = np.array([1] * 5 + [0] * 5)
    p = np.tile([0.05, 0.95], (10, 1))

    result = point_values(binary_metrics(), y, p)

    assert result["ece"] == pytest.approx(0.45)
    assert result["nll"] == pytest.approx(-(5 * np.log(0.95) + 5 * np.log(0.05)) / 10, abs=1e-4)   # rounded to 4 places


def test_a_calibrated_model_has_a_small_ece_and_a_certain_wrong_answer_a_finite_nll():
    rng = np.random.default_rng(1)
    confidence = rng.uniform(0.5, 1.0, 20000)
    y = (rng.uniform(size=20000) < confidence).astype(int)     # right exactly as often as it says
    p = np.stack([1 - confidence, confidence], axis=1)
    assert point_values(binary_metrics(), y, p)["ece"] < 0.02

    wrong = point_values(binary_metrics(), np.array([0]), np.array([[0.0, 1.0]]))
    assert wrong["nll"] == pytest.approx(-np.log(1e-12), abs=1e-4) and wrong["ece"] == pytest.approx(1.0)
