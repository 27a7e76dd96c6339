"""The gate (training/gate.py): its maths, and the graph surgery that bakes it into a model file
(re-runnable, reading the identity view of a test-time-augmented model)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from services.core.errors import WrongKindOfImage
from services.core.service import check_gate
from services.pneumonia.spec import SPEC as PNEUMONIA
from training import gate, tta


def _model(features: int = 3, classes: int = 2, seed: int = 0) -> onnx.ModelProto:
    """NHWC [N, 4, 4, 3] -> pooled [N, 3] (spatial mean, squeezed) -> dense -> softmax; cam = x @ W.
    The pooled features go through a MatMul, as the exported heads do. A lopsided spatial weight
    makes a flipped view give other features."""
    rng = np.random.default_rng(seed)
    weights = {
        "w": rng.normal(0, 1, (features, classes)).astype(np.float32),
        "m": (np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1) + 1) / 8,
    }
    nodes = [
        helper.make_node("Mul", ["input", "m"], ["weighted"]),
        helper.make_node("ReduceMean", ["weighted"], ["pooled"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        helper.make_node("MatMul", ["input", "w"], ["cam"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4, 4, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes]),
         helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", 4, 4, classes])],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto | bytes, names: list[str], x: np.ndarray) -> list[np.ndarray]:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(names, {"input": x})


def _pooled(x: np.ndarray) -> np.ndarray:
    m = (np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1) + 1) / 8
    return (x * m).mean(axis=(1, 2))


def _separable(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    genuine = rng.normal(0, 1, (300, 3))
    outside = rng.normal(4, 1, (300, 3))
    val = rng.normal(0, 1, (400, 3))
    return genuine, outside, val


def test_the_threshold_refuses_the_chosen_share_of_genuine_validation_images() -> None:
    genuine, outside, val = _separable()
    fitted = gate.LogisticGate.fit(genuine, outside, c=1.0)
    fitted.set_threshold(val, percentile=99.0)

    assert (fitted.ratio(val) > 1).mean() == pytest.approx(0.01, abs=0.0026)
    assert (fitted.ratio(outside) > 1).mean() > 0.95
    assert np.all(fitted.ratio(outside).mean() > fitted.ratio(genuine).mean())


def test_the_folded_weights_give_the_same_ratio_on_raw_features() -> None:
    genuine, outside, val = _separable(1)
    fitted = gate.LogisticGate.fit(genuine, outside, c=0.1)
    fitted.set_threshold(val)
    weight, bias = fitted.folded()
    x = np.concatenate([val[:20], outside[:20]])

    np.testing.assert_allclose(np.exp(x @ weight + bias), fitted.ratio(x), rtol=1e-9)


def test_the_mahalanobis_comparison_measures_distance_from_the_nearest_class() -> None:
    rng = np.random.default_rng(2)
    features = np.concatenate([rng.normal(0, 1, (200, 3)), rng.normal(10, 1, (200, 3))])
    labels = np.repeat(["a", "b"], 200)
    fitted = gate.MahalanobisGate(features, labels)
    fitted.set_threshold(features)

    near_each = fitted.ratio(np.array([[0.0, 0, 0], [10.0, 10, 10]]))
    far = fitted.ratio(np.array([[5.0, 5, 5], [-8.0, 0, 0]]))
    assert np.all(near_each < 0.2) and np.all(far > 1)


def test_the_baked_mahalanobis_gate_is_the_fitted_distance_over_its_threshold() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, (40, 4, 4, 3)).astype(np.float32)
    pooled = _pooled(x)
    fitted = gate.MahalanobisGate(pooled, np.repeat(["a", "b"], 20), components=2)
    fitted.set_threshold(pooled)
    gated = gate.add_gate(gate.strip_gate(_model()), fitted, {})

    np.testing.assert_allclose(_run(gated, ["ood_ratio"], x)[0][:, 0], fitted.ratio(pooled), rtol=1e-4)


def test_either_gate_fits_in_the_room_an_export_leaves_for_it() -> None:
    rng = np.random.default_rng(6)
    pooled = rng.normal(0, 1, (400, 300))
    model = gate.strip_gate(_model(features=300, classes=7))
    labels = np.repeat(list("abcdefg"), 58)[:400]
    fitted = {"mahalanobis": gate.MahalanobisGate(pooled, labels, components=256),
              "logistic": gate.LogisticGate.fit(pooled[:200], pooled[200:] + 1, 0.1)}
    room = gate.gate_bytes(300, 7, components=256)

    added = {}
    for name, candidate in fitted.items():
        candidate.set_threshold(pooled)
        added[name] = gate.add_gate(model, candidate, {"method": "x" * 200}).ByteSize() - model.ByteSize()
    assert 0 < added["logistic"] < added["mahalanobis"] <= room
    assert room - added["mahalanobis"] < 32 * 1024          # and not much more room than that


def test_the_method_refusing_more_outside_images_is_chosen_then_the_one_refusing_fewer_genuine() -> None:
    assert gate.select({"logistic": (1.0, 0.02), "mahalanobis": (0.97, 0.0)}) == "logistic"
    assert gate.select({"logistic": (1.0, 0.02), "mahalanobis": (1.0, 0.01)}) == "mahalanobis"


def test_a_method_refusing_over_2_percent_of_unfitted_genuine_training_rows_is_not_chosen() -> None:
    assert gate.select({"logistic": (1.0, 0.01, 0.042), "mahalanobis": (0.997, 0.013, 0.01)}) == "mahalanobis"
    assert gate.select({"logistic": (1.0, 0.01, 0.02), "mahalanobis": (0.997, 0.013, 0.0)}) == "logistic"
    # When every method is over the limit, the usual order decides.
    assert gate.select({"logistic": (1.0, 0.01, 0.05), "mahalanobis": (0.9, 0.0, 0.03)}) == "logistic"


def test_the_gate_reads_the_features_the_head_reads() -> None:
    assert gate.feature_tensor(_model()) == "pooled"


def test_the_baked_gate_is_the_fitted_ratio_and_leaves_the_other_outputs_alone() -> None:
    model = _model()
    x = np.random.default_rng(3).normal(0, 1, (5, 4, 4, 3)).astype(np.float32)
    weight, bias = np.array([0.5, -1.0, 2.0]), -0.3
    gated = gate.add_logistic_gate(gate.strip_gate(model), weight, bias, {"method": "logistic"})

    probabilities, cam, ratio = _run(gated, ["probabilities", "cam", "ood_ratio"], x)
    before = _run(model, ["probabilities", "cam"], x)
    np.testing.assert_array_equal(probabilities, before[0])
    np.testing.assert_array_equal(cam, before[1])
    np.testing.assert_allclose(ratio[:, 0], np.exp(_pooled(x) @ weight + bias), rtol=1e-5)


def test_re_gating_replaces_the_gate_instead_of_adding_one() -> None:
    once = gate.add_logistic_gate(gate.strip_gate(_model()), np.ones(3), 0.0, {})
    twice = gate.add_logistic_gate(gate.strip_gate(once), np.full(3, 2.0), 1.0, {})
    x = np.ones((1, 4, 4, 3), dtype=np.float32)

    assert [o.name for o in twice.graph.output] == ["probabilities", "cam", "ood_ratio"]
    assert sum(node.op_type == "Exp" for node in twice.graph.node) == 1
    np.testing.assert_allclose(_run(twice, ["ood_ratio"], x)[0][0, 0], np.exp(_pooled(x) @ np.full(3, 2.0) + 1.0),
                               rtol=1e-5)
    assert [o.name for o in gate.strip_gate(twice).graph.output] == ["probabilities", "cam"]


def test_a_test_time_augmented_model_is_gated_on_the_image_as_uploaded() -> None:
    """The views are stacked on the batch axis: the gate reads the identity view's rows only, and
    the extraction model gives those features at one backbone pass per image."""
    wrapped = tta.wrap_with_views(_model(), tta.VIEWS, {"probabilities": 1.0})
    x = np.random.default_rng(4).normal(0, 1, (3, 4, 4, 3)).astype(np.float32)
    weight = np.array([1.0, 0.0, -1.0])
    gated = gate.add_logistic_gate(gate.strip_gate(wrapped), weight, 0.2, {})

    expected = np.exp(_pooled(x) @ weight + 0.2)
    np.testing.assert_allclose(_run(gated, ["ood_ratio"], x)[0][:, 0], expected, rtol=1e-5)
    np.testing.assert_allclose(_run(gate.extraction_model(wrapped), ["gate/features"], x)[0], _pooled(x), rtol=1e-5)
    np.testing.assert_array_equal(_run(gated, ["probabilities"], x)[0], _run(wrapped, ["probabilities"], x)[0])


def test_a_graph_without_a_dense_head_is_refused() -> None:
    model = _model()
    model.graph.node[2].op_type = "Add"
    with pytest.raises(ValueError, match="no MatMul or Gemm"):
        gate.feature_tensor(model)


def test_a_refusal_names_what_the_model_reads() -> None:
    check_gate(PNEUMONIA, 0.99)
    for ratio in (1.01, float("nan"), float("inf")):
        with pytest.raises(WrongKindOfImage, match=r"chest X-rays .* pneumonia model reads .*chest_xray"):
            check_gate(PNEUMONIA, ratio)


def test_gating_a_model_rewrites_its_card_with_the_gated_size_and_the_gate_section(tmp_path) -> None:
    from tests.unit.test_training_card import _card
    from training import card as model_card

    model_card.write(_card(tmp_path), tmp_path)          # model_bytes=100, before the gate
    rate = gate.proportion(99, 100)
    record = {"method": "logistic regression", "kind": "logistic", "refusal": "INVALID_ARGUMENT",
              "measured": {"outside": rate, "outside_by_family": {"document": rate},
                           "genuine_test": gate.proportion(1, 100), "genuine_val": gate.proportion(1, 100)},
              "comparison": {"method": "Mahalanobis", "outside": rate, "genuine_test": rate},
              "command": "python -m training.gate --task pneumonia"}

    gate.write_card(tmp_path, record, 12_345_678, None)
    gate.write_card(tmp_path, record, 12_345_679, None)    # gated again: one section, the newest size

    text = (tmp_path / "card.md").read_text()
    assert "ONNX size 12,345,679 bytes" in text
    assert text.count(gate.CARD_START) == 1 and "Outside images refused" in text
    assert json.loads((tmp_path / "card.json").read_text())["model_bytes"] == 12_345_679
