"""Keras weights of a shipped model, recovered from its exported `model.onnx`.

    python -m training.recover_weights --task bone --out training/runs/bone-2026.11.2

The runs behind a shipped model are git-ignored (and those made on a lent GPU are gone with it),
but the exported graph keeps every weight: this writes them back as a `training.finetune` run of
the task, so that a new run can continue from the shipped model (`training.finetune --init-weights
OUT/model.weights.h5`). What is written to `--out`:

- `model.weights.h5`: our MobileNetV2 classifier (`training.finetune.build_model`) with the
  model's backbone and, as its head, the exported head over the labels the fine-tuning trains on
  (bone: the KL grade head; otherwise the probabilities head), without the exported temperature;
  the card says where that head came from (`training.heads`: the fine-tuned run's own, or one
  refit on its features), and `recovered_from.head_source` repeats it;
- `history.json`: the model card's record of the fine-tuning run, with `recovered_from` (the model's
  version and SHA-256) and the exported input size;
- `split.csv`: the model's own, so a continued run is checked against the same split.

The export folds each BatchNorm that follows a convolution into it (tf2onnx), and keeps the others
as a per-channel scale and shift: each BatchNorm is written as that scale and shift with zero mean
and unit variance, so the Keras model computes what the ONNX graph does (checked on random inputs,
max |Δprobability| <= 1e-4) but its BatchNorm can only be continued frozen.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from training.paths import PROJECT_ROOT
from training.tasks import SPECS

log = logging.getLogger("training.recover_weights")

PARITY_IMAGES = 8
PARITY_TOLERANCE = 1e-4


class NotRecoverable(ValueError):
    """The model was not exported by training.export from our fine-tuned MobileNetV2."""


def _one(candidates: list[Any], what: str) -> Any:
    if len(candidates) != 1:
        raise NotRecoverable(f"expected one {what} in the ONNX graph, found {len(candidates)}: not a "
                             "training.train export of our MobileNetV2")
    return candidates[0]


class _Graph:
    """Nodes and initializers of an exported model, looked up by the Keras layer names tf2onnx keeps."""

    def __init__(self, proto) -> None:
        from onnx import numpy_helper

        self.arrays = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
        self.nodes = list(proto.graph.node)

    def node(self, layer: str, suffix: str, op_type: str):
        pattern = re.compile(rf"(^|/){re.escape(layer)}(_\d+)?/{suffix}$")
        return _one([n for n in self.nodes if n.op_type == op_type and pattern.search(n.name)],
                    f"{op_type} node of {layer}")

    def conv_by_kernel(self, layer: str):
        # tf2onnx names the kernel merged_input where it folded a BatchNorm scale into it, else
        # ReadVariableOp (a model recovered and retrained here has BatchNorm scales of exactly 1)
        pattern = re.compile(rf"(^|/){re.escape(layer)}(_\d+)?/convolution/(merged_input|ReadVariableOp):0$")
        return _one([n for n in self.nodes if n.op_type == "Conv" and len(n.input) == 3
                     and pattern.search(n.input[1])], f"folded convolution of {layer}")

    def array(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            raise NotRecoverable(f"{name} is computed, not stored, in the ONNX graph")
        return self.arrays[name]


def _identity_batchnorm(layer, scale: np.ndarray, shift: np.ndarray) -> None:
    """BatchNorm computing scale * x + shift: gamma = scale, beta = shift, mean 0, variance 1 - epsilon."""
    scale, shift = scale.reshape(-1).astype(np.float32), shift.reshape(-1).astype(np.float32)
    layer.set_weights([scale, shift, np.zeros_like(scale), np.full_like(scale, 1.0 - layer.epsilon)])


def _batchnorm_name(conv: str) -> str:
    return {"Conv1": "bn_Conv1", "Conv_1": "Conv_1_bn"}.get(conv, f"{conv}_BN")


def set_backbone(model, graph: _Graph) -> None:
    """Every convolution and BatchNorm of the Keras MobileNetV2 inside `model` from `graph`."""
    import keras

    layers = {layer.name: layer for layer in model.layers}
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kernel = graph.array(graph.node(layer.name, "depthwise", "Conv").input[1])   # (C, 1, kh, kw)
            layer.set_weights([kernel.transpose(2, 3, 0, 1)])
            batchnorm = f"{layer.name}_BN"
            scale = graph.array(graph.node(batchnorm, "batchnorm/mul_1", "Mul").input[1])
            shift = graph.array(graph.node(batchnorm, "batchnorm/add_1", "Add").input[1])
            _identity_batchnorm(layers[batchnorm], scale, shift)
        elif isinstance(layer, keras.layers.Conv2D):
            node = graph.conv_by_kernel(layer.name)
            layer.set_weights([graph.array(node.input[1]).transpose(2, 3, 1, 0)])         # (O, I, kh, kw)
            bias = graph.array(node.input[2])
            _identity_batchnorm(layers[_batchnorm_name(layer.name)], np.ones_like(bias), bias)


def head_weights(graph: _Graph, head: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(kernel, bias, 1/T) of an exported head: logits = pooled @ kernel + bias, softmax(logits / T)."""
    kernel = graph.array(graph.node(f"{head}_logits", "MatMul", "MatMul").input[1])
    bias = graph.array(graph.node(f"{head}_logits", "BiasAdd", "Add").input[1])
    inverse_temperature = float(graph.array(graph.node(f"{head}_temperature", "mul", "Mul").input[1]))
    return kernel, bias, inverse_temperature


def trained_head(task: str) -> str:
    """The exported head that training.finetune trained: bone's on the KL grade, the others' own."""
    return "kl_probabilities" if task == "bone" else "probabilities"


def _shown(path: Path) -> str:
    """`path` relative to the project when it is inside it (cards name project files that way)."""
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def recover(task: str, model_path: Path, out: Path, imagenet_weights: str | None = None) -> dict[str, Any]:
    """Write `out`/{model.weights.h5, history.json, split.csv} from the shipped model at `model_path`;
    returns the history record."""
    import onnx
    import onnxruntime as ort

    from training import tta
    from training.finetune import build_model

    model_dir = Path(model_path).parent
    card = json.loads((model_dir / "card.json").read_text(encoding="utf-8"))
    if card.get("task") != task:
        raise NotRecoverable(f"{model_path} is a {card.get('task')!r} model, not {task}")
    finetune = card.get("training", {}).get("finetune") or {}
    if finetune.get("settings", {}).get("arch") != "mobilenet_v2_finetuned":
        raise NotRecoverable(f"{model_path}: its card records no training.finetune run of our MobileNetV2 "
                             "to continue (a frozen backbone, or blocks fine-tuned by training.train on "
                             "cached features)")
    proto = onnx.load(str(model_path))
    if tta.is_wrapped(proto):
        proto = tta.original_model(proto)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    _, height, width, _ = session.get_inputs()[0].shape
    graph = _Graph(proto)

    model = build_model("mobilenet_v2_finetuned", task, imagenet_weights, input_size=(width, height))
    set_backbone(model, graph)
    head = trained_head(task)
    kernel, bias, inverse_temperature = head_weights(graph, head)
    model.get_layer("probabilities").set_weights([kernel, bias])

    # The Keras model with the exported temperature must give the exported probabilities.
    images = np.random.default_rng(0).uniform(-1, 1, (PARITY_IMAGES, height, width, 3)).astype(np.float32)
    expected = session.run([head], {"input": images})[0]
    # softmax(log p / T) = softmax(logits / T): the exported head's temperature on the Keras output
    recovered = tta.recalibrated(np.asarray(model.predict(images, verbose=0), dtype=np.float64),
                                 1.0 / inverse_temperature)
    difference = float(np.abs(recovered - expected).max())
    if difference > PARITY_TOLERANCE:
        raise NotRecoverable(f"the recovered Keras model differs from {model_path} by {difference:.2e} "
                             f"(> {PARITY_TOLERANCE}) on random inputs")

    out.mkdir(parents=True, exist_ok=True)
    model.save_weights(out / "model.weights.h5")
    shutil.copyfile(model_dir / "split.csv", out / "split.csv")
    record = {key: finetune[key] for key in ("settings", "augmentation", "best_epoch", "epochs_run",
                                              "best_validation_score", "fit_seconds", "device", "keras_backend")
              if key in finetune}
    record.update({
        "task": task, "input_size": [int(width), int(height)],
        "previous_runs": finetune.get("previous_runs", []),
        "recovered_from": {"model": _shown(Path(model_path)), "version": card.get("version"),
                           "sha256": hashlib.sha256(Path(model_path).read_bytes()).hexdigest(),
                           "head": head,
                           "head_source": card.get("training", {}).get("heads", {}).get(head, {}).get("source"),
                           "max_abs_difference": difference},
    })
    (out / "history.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    log.info("recovered %s %s into %s (max |Δprobability| %.1e on %d random inputs)", task,
             card.get("version"), out, difference, PARITY_IMAGES)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.recover_weights", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=sorted(SPECS))
    parser.add_argument("--model", type=Path, help="model.onnx (default: the shipped services/<task>/model/model.onnx)")
    parser.add_argument("--weights", help="MobileNetV2 .npy folder the classifier is first built with "
                        "(default: DRTECH_WEIGHTS_DIR or ../shared/weights); every weight is then replaced")
    parser.add_argument("--out", type=Path, required=True, help="output folder (e.g. training/runs/bone-2026.11.2)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    model_path = args.model or SPECS[args.task].model_dir / "model.onnx"
    try:
        recover(args.task, model_path, args.out, args.weights)
    except (NotRecoverable, FileNotFoundError) as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    from training.cli import run

    raise SystemExit(run(main))
