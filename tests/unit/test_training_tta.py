"""Test-time augmentation: the wrapped ONNX graph answers the mean over the views of each image
(flips, transpositions), recalibrated, with each view's CAM turned back; a wrapped model folder is
re-measured and its card says so, or is left as it was."""

from __future__ import annotations

import csv
import json
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from services.bone.spec import SPEC as BONE
from services.core.preprocessing import to_model_input
from services.skin.spec import SPEC as SKIN
from tests.serving_models import build_model, write_fixture_model
from tests.support import synthetic_image
from training import card as model_card
from training import evaluate, metrics, tta
from training.datasets import Record
from training.evaluate import outputs_for, records_from_split_csv, score_outputs
from training.inference import run_onnx
from training.splits import SplitRecord

SKIN_VIEWS = ("none", "horizontal", "vertical", "both",
              "transposed", "transposed+horizontal", "transposed+vertical", "transposed+both")


@pytest.fixture(autouse=True)
def few_bootstrap_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The intervals' width is not under test here; 1000 bootstrap rounds of every metric would
    be most of this file's run time."""
    monkeypatch.setattr(evaluate, "with_intervals", partial(metrics.with_intervals, rounds=20))


def _asymmetric_model(classes: int = 3, opset: int = 17, seed: int = 0) -> onnx.ModelProto:
    """NHWC [N, 4, 4, 3] -> cam = x @ W [N, 4, 4, C]; logits = sum(cam * M) with a lopsided spatial
    weight M, so a flipped image gets other probabilities (a wrong flip cannot pass unnoticed)."""
    rng = np.random.default_rng(seed)
    weights = {
        "w": rng.normal(0, 1, (3, classes)).astype(np.float32),
        "m": np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1) ** 1.5 / 20,
        "axes": np.array([1, 2], dtype=np.int64),
    }
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["cam"]),
        helper.make_node("Mul", ["cam", "m"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "axes"], ["logits"], keepdims=0),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "asymmetric", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4, 4, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes]),
         helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", 4, 4, classes])],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# What each view does to an NHWC batch, and how a map on the view is turned back, written out
# independently of the module under test.
FLIP = {"none": lambda x: x, "horizontal": lambda x: x[:, :, ::-1], "vertical": lambda x: x[:, ::-1],
        "both": lambda x: x[:, ::-1, ::-1]}
VIEW = {**FLIP, **{f"transposed+{name}" if name != "none" else "transposed":
                   (lambda x, f=f: f(x.transpose(0, 2, 1, 3))) for name, f in FLIP.items()}}
UNDO = {**FLIP, **{f"transposed+{name}" if name != "none" else "transposed":
                   (lambda c, f=f: f(c).transpose(0, 2, 1, 3)) for name, f in FLIP.items()}}


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("batch", [1, 5])
def test_wrapped_graph_is_the_recalibrated_mean_over_flipped_views(opset: int, batch: int) -> None:
    model = _asymmetric_model(opset=opset)
    x = np.random.default_rng(batch).normal(0, 1, (batch, 4, 4, 3)).astype(np.float32)
    plain = _session(model)
    wrapped = _session(tta.wrap_with_views(model, SKIN_VIEWS, {"probabilities": 0.7}))

    views = [plain.run(["probabilities", "cam"], {"input": np.ascontiguousarray(VIEW[v](x))}) for v in SKIN_VIEWS]
    mean_p = np.mean([p for p, _ in views], axis=0)
    expected_p = _softmax(np.log(mean_p) / 0.7)
    expected_cam = np.mean([UNDO[v](cam) for v, (_, cam) in zip(SKIN_VIEWS, views, strict=True)], axis=0)
    probabilities, cam = wrapped.run(["probabilities", "cam"], {"input": x})

    assert not np.allclose(views[0][0], views[1][0], atol=1e-3)     # the views really differ
    assert not np.allclose(views[0][0], views[4][0], atol=1e-3)
    np.testing.assert_allclose(probabilities, expected_p, atol=1e-6)
    np.testing.assert_allclose(cam, expected_cam, atol=1e-5)
    assert probabilities.shape == (batch, 3) and cam.shape == (batch, 4, 4, 3)


def test_horizontal_only_views_and_the_contract_are_kept() -> None:
    model = _asymmetric_model()
    x = np.random.default_rng(3).normal(0, 1, (2, 4, 4, 3)).astype(np.float32)
    wrapped = tta.wrap_with_views(model, ("none", "horizontal"), {"probabilities": 1.0})
    plain = _session(model)
    mean_p = np.mean([plain.run(["probabilities"], {"input": np.ascontiguousarray(FLIP[f](x))})[0]
                      for f in ("none", "horizontal")], axis=0)

    np.testing.assert_allclose(_session(wrapped).run(["probabilities"], {"input": x})[0], mean_p, atol=1e-6)
    assert [i.name for i in wrapped.graph.input] == ["input"]
    assert [o.name for o in wrapped.graph.output] == ["probabilities", "cam"]
    assert json.loads({p.key: p.value for p in wrapped.metadata_props}[tta.METADATA_KEY]) == {
        "views": ["none", "horizontal"], "temperatures": {"probabilities": 1.0}}
    # Only the axes a flip uses are stored (ONNX Runtime warns about unused initializers).
    assert "tta/axis_1" not in {init.name for init in wrapped.graph.initializer}


@pytest.mark.parametrize("flips, temperatures, message", [
    (("none", "sideways"), {"probabilities": 1.0}, "unknown view 'sideways'"),
    (("none", "none"), {"probabilities": 1.0}, "views must be distinct"),
    ((), {"probabilities": 1.0}, "views must be distinct"),
    (SKIN_VIEWS, {}, "missing \\['probabilities'\\]"),
    (SKIN_VIEWS, {"probabilities": 0.0}, "positive temperature"),
    (SKIN_VIEWS, {"probabilities": float("nan")}, "positive temperature"),
])
def test_bad_wrapping_requests_are_refused(flips, temperatures, message) -> None:
    with pytest.raises(ValueError, match=message):
        tta.wrap_with_views(_asymmetric_model(), flips, temperatures)


def test_a_transposed_view_needs_a_square_input() -> None:
    model = _asymmetric_model()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 5
    with pytest.raises(ValueError, match="square input, this model's is 4x5"):
        tta.wrap_with_views(model, ("none", "transposed"), {"probabilities": 1.0})
    tta.wrap_with_views(model, ("none", "horizontal"), {"probabilities": 1.0})     # flips need no square


def test_a_model_using_the_wrappers_names_is_refused() -> None:
    model = _asymmetric_model()
    model.graph.node[0].output[0] = "tta/cam"
    model.graph.node[1].input[0] = "tta/cam"
    with pytest.raises(ValueError, match="names starting with 'tta/'"):
        tta.wrap_with_views(model, ("none", "horizontal"), {"probabilities": 1.0})


def test_a_wrapped_model_is_not_wrapped_again() -> None:
    wrapped = tta.wrap_with_views(_asymmetric_model(), SKIN_VIEWS, {"probabilities": 1.0})
    with pytest.raises(ValueError, match="already averages"):
        tta.wrap_with_views(wrapped, SKIN_VIEWS, {"probabilities": 1.0})


def test_chest_films_get_no_flips() -> None:
    assert "pneumonia" not in tta.TASK_VIEWS
    with pytest.raises(ValueError, match="no flip or rotation leaves this diagnosis unchanged"):
        tta.apply("pneumonia", Path("unused"), Path("unused"), "1")


def _fixture_folder(spec, tmp_path: Path, labels: list[str]) -> Path:
    """A fixture model with a full card (from training.card.build) and a split.csv of synthetic images."""
    model_dir = write_fixture_model(spec, tmp_path / "model").model_dir
    root = tmp_path / "data"
    root.mkdir()
    kind = "skin_lesion" if spec.task == "skin" else "knee"
    rows = []
    for index, label in enumerate(labels * 3):
        name = f"img{index}.png"
        synthetic_image(kind, seed=index).transpose(index % 3).save(root / name)
        rows.append(SplitRecord(Record(root / name, label, f"group{index}"), ("train", "val", "test")[index % 3]))
    with (model_dir / "split.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group", "split"])
        writer.writerows([r.record.path.name, r.record.label, r.record.group, r.split] for r in rows)
    test_records = records_from_split_csv(model_dir / "split.csv", root, "test")
    test = score_outputs(spec.task, test_records,
                         run_onnx(model_dir / "model.onnx", [r.path for r in test_records],
                                  outputs_for(spec.task, test_records)), intervals=True)
    card = model_card.build(
        task=spec.task, split=rows, validation={"accuracy": 0.5, "balanced_accuracy": 0.5},
        test=test, heads={}, finetune=None, parameters=10, timing={"a_seconds": 1.0}, augmentation="none",
        parity={"probabilities": 1e-7}, parity_images=2,
        interface={"outputs": [("probabilities", ["N", len(spec.labels)], "tensor(float)")]}, model_bytes=1,
        data_root=root, calibration={"probabilities": {"temperature": 1.0}})
    card["version"] = "0.0.1"
    model_card.write(card, model_dir)
    return model_dir


@pytest.mark.parametrize("spec, labels", [
    (SKIN, SKIN.label_codes),
    (BONE, ["0", "1", "2", "3", "4"]),
])
def test_apply_replaces_the_model_and_re_measures_its_card(spec, labels, tmp_path: Path) -> None:
    model_dir = _fixture_folder(spec, tmp_path, labels)
    original = onnx.load(str(model_dir / "model.onnx"))
    (model_dir / ".model.onnx.tmp").write_bytes(b"left by a killed run")

    card = tta.apply(spec.task, model_dir, tmp_path / "data", "9.9.9")

    shipped = onnx.load(str(model_dir / "model.onnx"))
    assert tta.is_wrapped(shipped) and not tta.is_wrapped(original)
    stored = json.loads((model_dir / "card.json").read_text(encoding="utf-8"))
    assert stored == card and card["version"] == "9.9.9"
    augmentation = card["architecture"]["test_time_augmentation"]
    assert augmentation["views"] == list(tta.TASK_VIEWS[spec.task])
    assert augmentation["without_tta"]["version"] == "0.0.1"
    assert augmentation["without_tta"]["temperatures"] == {"probabilities": 1.0}
    assert augmentation["command"] == (f"python -m training.tta --task {spec.task} --version 9.9.9 "
                                       f"--model-dir {model_dir}")
    assert not (model_dir / ".model.onnx.tmp").exists()
    heads = {"probabilities", "kl_probabilities"} if spec.task == "bone" else {"probabilities"}
    assert set(card["calibration"]["heads"]) == heads
    for head in heads:
        assert card["calibration"]["heads"][head]["temperature"] > 0
        assert {"validation", "test"} <= set(card["calibration"]["heads"][head])
    assert set(card["validation_metrics"]) == {"accuracy", "balanced_accuracy"}
    assert card["metrics"]["n"] > 0 and "ci95_low" in card["metrics"]["accuracy"]
    assert card["export"]["tta_parity_max_abs_diff"]["probabilities"] <= 1e-4
    assert card["model_bytes"] == (model_dir / "model.onnx").stat().st_size
    assert "Test-time augmentation" in (model_dir / "card.md").read_text(encoding="utf-8")
    assert (model_dir / "reliability.png").is_file()
    # The served model answers the recalibrated mean over the views of the original model.
    images = np.stack([np.asarray(synthetic_image("skin_lesion", seed=s), np.float32) / 127.5 - 1 for s in (1, 2)])
    views = [_session(original).run(["probabilities"], {"input": np.ascontiguousarray(VIEW[f](images))})[0]
             for f in tta.TASK_VIEWS[spec.task]]
    expected = _softmax(np.log(np.mean(views, axis=0)) / card["calibration"]["heads"]["probabilities"]["temperature"])
    np.testing.assert_allclose(_session(shipped).run(["probabilities"], {"input": images})[0], expected, atol=1e-5)


def test_apply_refuses_a_non_square_skin_model_before_any_work(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    onnx.save(build_model(len(SKIN.labels), input_size=(100, 75)), str(model_dir / "model.onnx"))
    before = (model_dir / "model.onnx").read_bytes()

    # No card or split.csv is needed to refuse: the model's input is checked first.
    with pytest.raises(ValueError, match="square input, this model's is 75x100"):
        tta.apply("skin", model_dir, tmp_path, "9.9.9")
    assert (model_dir / "model.onnx").read_bytes() == before


def test_the_wrapped_model_may_not_take_the_one_view_models_version(tmp_path: Path) -> None:
    model_dir = _fixture_folder(SKIN, tmp_path, SKIN.label_codes)      # its card says 0.0.1
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}

    with pytest.raises(ValueError, match=r"0\.0\.1\+one-view"):
        tta.apply("skin", model_dir, tmp_path / "data", "0.0.1")

    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before


def test_apply_refuses_a_wrapped_model_and_leaves_the_folder_alone(tmp_path: Path) -> None:
    model_dir = _fixture_folder(SKIN, tmp_path, SKIN.label_codes)
    tta.apply("skin", model_dir, tmp_path / "data", "9.9.9")
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}

    with pytest.raises(ValueError, match="already averages"):
        tta.apply("skin", model_dir, tmp_path / "data", "9.9.10")

    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before


@pytest.mark.parametrize("failing", ["training.tta.write_plots", "training.tta.model_card.write"])
def test_a_failure_while_replacing_leaves_the_folder_as_it_was(failing: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = _fixture_folder(SKIN, tmp_path, SKIN.label_codes)
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}

    def fail(*_: object, **__: object) -> None:
        (model_dir / "half_written.png").write_bytes(b"x")
        raise OSError("disk full")

    with monkeypatch.context() as patched, pytest.raises(OSError, match="disk full"):
        patched.setattr(failing, fail)
        tta.apply("skin", model_dir, tmp_path / "data", "9.9.9")

    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before
    tta.apply("skin", model_dir, tmp_path / "data", "9.9.9")       # and it can simply be run again
    assert tta.is_wrapped(onnx.load(str(model_dir / "model.onnx")))


@pytest.mark.parametrize("spec", [SKIN, BONE])
def test_the_shipped_skin_and_bone_models_average_their_task_flips(spec) -> None:
    shipped = onnx.load(str(spec.model_path))
    metadata = json.loads({p.key: p.value for p in shipped.metadata_props}[tta.METADATA_KEY])
    card = json.loads(spec.card_path.read_text(encoding="utf-8"))

    assert metadata["views"] == list(tta.TASK_VIEWS[spec.task]) == card["architecture"]["test_time_augmentation"]["views"]
    assert metadata["temperatures"] == {head: values["temperature"]
                                        for head, values in card["calibration"]["heads"].items()}
    assert card["export"]["tta_parity_max_abs_diff"]["probabilities"] <= 1e-4


@pytest.mark.parametrize("spec", [SKIN, BONE])
def test_the_shipped_answer_is_the_mean_over_views_of_the_model_inside(spec) -> None:
    shipped = onnx.load(str(spec.model_path))
    inner = _session(tta.original_model(shipped))
    names = [o.name for o in inner.get_outputs()]
    _, height, width, _ = inner.get_inputs()[0].shape
    images = np.stack([to_model_input(synthetic_image(kind, seed=seed).transpose(seed), (width, height))
                       for kind in ("skin_lesion", "knee") for seed in range(2)])
    temperatures = json.loads({p.key: p.value for p in shipped.metadata_props}[tta.METADATA_KEY])["temperatures"]

    got = dict(zip(names, _session(shipped).run(names, {"input": images}), strict=True))
    flips = tta.TASK_VIEWS[spec.task]
    views = [dict(zip(names, inner.run(names, {"input": np.ascontiguousarray(VIEW[f](images))}), strict=True))
             for f in flips]
    np.testing.assert_allclose(got["cam"], np.mean([UNDO[f](v["cam"]) for f, v in zip(flips, views, strict=True)],
                                                   axis=0), atol=1e-4)
    for name, temperature in temperatures.items():
        expected = _softmax(np.log(np.mean([v[name] for v in views], axis=0).astype(np.float64)) / temperature)
        np.testing.assert_allclose(got[name], expected, atol=1e-5)
    assert [o.name for o in shipped.graph.output] == names


def test_removing_the_augmentation_gives_the_original_model_back() -> None:
    model = _asymmetric_model()
    unwrapped = tta.original_model(tta.wrap_with_views(model, SKIN_VIEWS, {"probabilities": 0.5}))
    x = np.random.default_rng(5).normal(0, 1, (2, 4, 4, 3)).astype(np.float32)

    for a, b in zip(_session(model).run(None, {"input": x}), _session(unwrapped).run(None, {"input": x}), strict=True):
        np.testing.assert_array_equal(a, b)
    assert unwrapped == model
    assert not tta.is_wrapped(unwrapped)
    with pytest.raises(ValueError, match="no test-time augmentation"):
        tta.original_model(model)


def test_the_shipped_pneumonia_model_has_no_flips() -> None:
    from services.pneumonia.spec import SPEC as PNEUMONIA

    assert not tta.is_wrapped(onnx.load(str(PNEUMONIA.model_path)))


def test_version_must_be_a_plain_name(capsys) -> None:
    with pytest.raises(SystemExit):
        tta.main(["--task", "skin", "--version", "../evil"])
    assert "use letters, digits" in capsys.readouterr().err


def test_a_transposed_view_is_the_photo_turned_a_quarter_and_preprocessed() -> None:
    """Why the transposed views are exact for skin: transposing the model input of a 4:3 photo is
    preprocessing the photo turned by 90 degrees (and mirrored), up to resampling rounding."""
    photo = synthetic_image("skin_lesion", size=(200, 150), seed=4)
    photo.paste((40, 20, 10), (20, 10, 70, 40))                   # an off-centre mark to follow

    for view, turned in [("transposed", photo.transpose(Image.Transpose.TRANSPOSE)),
                         ("transposed+horizontal", photo.transpose(Image.Transpose.ROTATE_270)),
                         ("transposed+vertical", photo.transpose(Image.Transpose.ROTATE_90))]:
        seen = tta.apply_view(to_model_input(photo)[None], view)[0]
        np.testing.assert_allclose(seen, to_model_input(turned), atol=2 / 127.5)
        np.testing.assert_array_equal(tta.undo_view(tta.apply_view(seen[None], view), view)[0], seen)


def test_training_train_offers_tta_only_where_a_view_keeps_the_diagnosis(tmp_path: Path, capsys) -> None:
    from training.train import main

    with pytest.raises(SystemExit) as stop:
        main(["--task", "pneumonia", "--data", str(tmp_path), "--tta"])
    assert stop.value.code == 2
    assert "--tta: no flip or rotation leaves a pneumonia diagnosis unchanged" in capsys.readouterr().err

    with pytest.raises(SystemExit) as stop:
        main(["--task", "pneumonia", "--data", str(tmp_path), "--augment", "views"])
    assert stop.value.code == 2
    assert "--augment views: no flip or rotation leaves a pneumonia diagnosis unchanged" in capsys.readouterr().err
