"""Test-time augmentation (TTA) with exact flips, built into a shipped model's ONNX graph.

    python -m training.tta --task {skin,bone} [--data DIR] [--model-dir services/T/model] --version V

A dermatoscopic image has no up or left, and a knee radiograph is the mirror image of the other
knee, so for these tasks a flipped image is the same case: the model is asked about every flipped
view and their probabilities are averaged (chest films are not flipped: the heart has a side).

The wrapped graph keeps the serving contract (one `input`, the same outputs and shapes), so the
serving core, the batcher and the gateway do not change; each image costs one backbone pass per
view. Inside it: the views are stacked on the batch axis, run through the original graph, split
back, the CAMs flipped back to the image's orientation, and per output the mean over views is
taken. The mean of calibrated probabilities is less confident than each view, so it is calibrated
again: softmax(log(mean p) / T), one T per probability output fitted on the validation rows of
the model's own split.csv (never the test rows). The command replaces model.onnx after checking
the wrapped graph against the same computation done view by view in NumPy (max |Δprobability|
<= 1e-4 on 128 validation images), then re-measures the card's validation and held-out metrics,
calibration and plots with the wrapped model.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from training import card as model_card
from training.calibration import fit_temperature, logits_of_calibrated, temperature_report
from training.evaluate import binary_targets, outputs_for, records_from_split_csv, score_outputs
from training.export import MAX_MODEL_BYTES, PARITY_TOLERANCE
from training.features import FLIP_AXES, flipped, load_image
from training.paths import VERSION_PATTERN, data_dir
from training.tasks import SPECS

log = logging.getLogger("training.tta")

# The flips that leave the diagnosis unchanged, per task (see the module docstring).
TASK_FLIPS: dict[str, tuple[str, ...]] = {
    "skin": ("none", "horizontal", "vertical", "both"),
    "bone": ("none", "horizontal"),
}
# Axes of an NHWC batch each flip reverses (features.FLIP_AXES is per HWC image).
BATCH_FLIP_AXES: dict[str, tuple[int, ...]] = {name: tuple(a + 1 for a in axes) for name, axes in FLIP_AXES.items()}
METADATA_KEY = "drtech.test_time_augmentation"
CAM = "cam"
PARITY_IMAGES = 128
# Probabilities that underflowed to 0 are clipped here before the log (as calibration.logits_of_calibrated).
TINY = float(np.finfo(np.float32).tiny)


def is_wrapped(proto) -> bool:
    return any(prop.key == METADATA_KEY for prop in proto.metadata_props)


def _opset(proto) -> int:
    return max(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))


def wrap_with_flips(proto, flips: Sequence[str], temperatures: dict[str, float]):
    """A copy of the ONNX model `proto` that averages its outputs over the flipped views `flips`.

    `temperatures`: {probability output name: T} for every output but `cam`; each becomes
    softmax(log(mean over views) / T). The CAM output is the mean of the views' CAMs, each flipped
    back. Raises ValueError for a model already wrapped, an unknown flip or a missing temperature.
    """
    import onnx
    from onnx import helper, numpy_helper

    if is_wrapped(proto):
        raise ValueError("this model already averages over flipped views; wrap the original model")
    unknown = [f for f in flips if f not in BATCH_FLIP_AXES]
    if unknown or not flips or len(set(flips)) != len(flips):
        raise ValueError(f"flips must be distinct names from {sorted(BATCH_FLIP_AXES)}, got {list(flips)}")
    outputs = [o.name for o in proto.graph.output]
    missing = sorted(set(outputs) - {CAM} - set(temperatures))
    if missing or any(not (t > 0 and np.isfinite(t)) for t in temperatures.values()):
        raise ValueError(f"need a positive temperature for every probability output: missing {missing}, "
                         f"given {temperatures}")
    if [i.name for i in proto.graph.input] != ["input"]:
        raise ValueError(f"expected one graph input named 'input', got {[i.name for i in proto.graph.input]}")

    wrapped = onnx.ModelProto()
    wrapped.CopyFrom(proto)
    graph = wrapped.graph
    # The original graph now reads the stacked views and writes to inner names.
    inner = {name: f"tta/inner/{name}" for name in ["input", *outputs]}
    for node in graph.node:
        node.input[:] = [inner.get(name, name) for name in node.input]
        node.output[:] = [inner.get(name, name) for name in node.output]
    del graph.value_info[:]

    views = len(flips)
    new_nodes, initializers = [], [
        numpy_helper.from_array(np.array([np.iinfo(np.int64).min], dtype=np.int64), "tta/int64_min"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "tta/minus_one"),
        numpy_helper.from_array(np.array(TINY, dtype=np.float32), "tta/tiny"),
    ]
    for axis in sorted({axis for flip in flips for axis in BATCH_FLIP_AXES[flip]}):
        initializers.append(numpy_helper.from_array(np.array([axis], dtype=np.int64), f"tta/axis_{axis}"))

    def flip_node(source: str, flip: str, name: str) -> str:
        """`source` with the flip's axes reversed (Slice with step -1), or `source` itself."""
        current = source
        for axis in BATCH_FLIP_AXES[flip]:
            target = f"{name}/axis_{axis}"
            new_nodes.append(helper.make_node(
                "Slice", [current, "tta/minus_one", "tta/int64_min", f"tta/axis_{axis}", "tta/minus_one"],
                [target], name=target))
            current = target
        return current

    view_inputs = [flip_node("input", flip, f"tta/view_{i}") for i, flip in enumerate(flips)]
    new_nodes.append(helper.make_node("Concat", view_inputs, [inner["input"]], axis=0, name="tta/views"))
    split_extra = {"num_outputs": views} if _opset(proto) >= 18 else {}
    for output in outputs:
        parts = [f"tta/{output}/view_{i}" for i in range(views)]
        new_nodes.append(helper.make_node("Split", [inner[output]], parts, axis=0, name=f"tta/{output}/split",
                                          **split_extra))
        if output == CAM:
            back = [flip_node(part, flip, f"{part}/back") for part, flip in zip(parts, flips, strict=True)]
            new_nodes.append(helper.make_node("Mean", back, [output], name="tta/cam/mean"))
            continue
        temperature = f"tta/{output}/temperature"
        initializers.append(numpy_helper.from_array(np.array(temperatures[output], dtype=np.float32), temperature))
        new_nodes += [
            helper.make_node("Mean", parts, [f"tta/{output}/mean"], name=f"tta/{output}/mean"),
            helper.make_node("Max", [f"tta/{output}/mean", "tta/tiny"], [f"tta/{output}/clipped"],
                             name=f"tta/{output}/clip"),
            helper.make_node("Log", [f"tta/{output}/clipped"], [f"tta/{output}/log"], name=f"tta/{output}/log"),
            helper.make_node("Div", [f"tta/{output}/log", temperature], [f"tta/{output}/scaled"],
                             name=f"tta/{output}/temperature_scaling"),
            helper.make_node("Softmax", [f"tta/{output}/scaled"], [output], axis=-1, name=f"tta/{output}/softmax"),
        ]
    # Topological order: the flips first, then the original graph, then the averaging.
    views_end = sum(len(BATCH_FLIP_AXES[f]) for f in flips) + 1
    original = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes[:views_end] + original + new_nodes[views_end:])
    graph.initializer.extend(initializers)
    wrapped.metadata_props.append(onnx.StringStringEntryProto(
        key=METADATA_KEY, value=json.dumps({"flips": list(flips), "temperatures": temperatures})))
    onnx.checker.check_model(wrapped)
    return wrapped


def original_model(proto):
    """The model `wrap_with_flips` wrapped, as it was (one view, its own outputs)."""
    import onnx

    if not is_wrapped(proto):
        raise ValueError("this model has no test-time augmentation to remove")
    original = onnx.ModelProto()
    original.CopyFrom(proto)
    graph = original.graph
    kept = [node for node in graph.node if not node.name.startswith("tta/")]
    back = {f"tta/inner/{o.name}": o.name for o in graph.output} | {"tta/inner/input": "input"}
    for node in kept:
        node.input[:] = [back.get(name, name) for name in node.input]
        node.output[:] = [back.get(name, name) for name in node.output]
    del graph.node[:]
    graph.node.extend(kept)
    initializers = [init for init in graph.initializer if not init.name.startswith("tta/")]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    metadata = [prop for prop in original.metadata_props if prop.key != METADATA_KEY]
    del original.metadata_props[:]
    original.metadata_props.extend(metadata)
    onnx.checker.check_model(original)
    return original


def view_outputs(session, images: np.ndarray, flips: Sequence[str], names: Sequence[str]) -> list[dict[str, np.ndarray]]:
    """The original model's outputs for each flipped view of `images` (CAMs flipped back)."""
    per_view = []
    for flip in flips:
        x = np.ascontiguousarray(flipped(images, flip, batch=True))
        values = dict(zip(names, session.run(list(names), {"input": x}), strict=True))
        if CAM in values:
            values[CAM] = flipped(values[CAM], flip, batch=True)
        per_view.append(values)
    return per_view


def recalibrated(mean_probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(mean p) / T), in NumPy: what the wrapped graph computes."""
    scaled = np.log(np.maximum(mean_probabilities, TINY)) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    e = np.exp(scaled)
    return e / e.sum(axis=1, keepdims=True)


def mean_over_views(session, paths: Sequence[Path], flips: Sequence[str], names: Sequence[str],
                    size: tuple[int, int], batch: int = 32) -> dict[str, np.ndarray]:
    """{output: mean over flipped views} of the original model for the images at `paths`."""
    collected: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, len(paths), batch):
        images = np.stack([load_image(p, size=size) for p in paths[start:start + batch]])
        views = view_outputs(session, images, flips, names)
        for name in names:
            collected[name].append(np.mean([v[name] for v in views], axis=0))
    return {name: np.concatenate(values) for name, values in collected.items()}


def _validation_summary(task: str, scored: dict[str, Any], keys: Sequence[str]) -> dict[str, float]:
    return {key: round(float(scored[key]), 4) for key in keys if key in scored}


def apply(task: str, model_dir: Path, root: Path, version: str) -> dict[str, Any]:
    """Wrap `model_dir/model.onnx` with the task's flips, re-measure and rewrite its card; returns the card."""
    import onnx
    import onnxruntime as ort

    from services.core.runtime import input_size_of
    from training.inference import run_onnx
    from training.model_plots import write_plots

    if task not in TASK_FLIPS:
        raise ValueError(f"{task}: no flip leaves this diagnosis unchanged, so there is no exact test-time "
                         f"augmentation (tasks with one: {sorted(TASK_FLIPS)})")
    flips = TASK_FLIPS[task]
    model_path = model_dir / "model.onnx"
    proto = onnx.load(str(model_path))
    if is_wrapped(proto):
        raise ValueError(f"{model_path} already averages over flipped views")
    card = json.loads((model_dir / "card.json").read_text(encoding="utf-8"))
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    size = input_size_of(session.get_inputs()[0].shape, model_path)
    val = records_from_split_csv(model_dir / "split.csv", root, "val")
    test = records_from_split_csv(model_dir / "split.csv", root, "test")

    # One temperature per probability output, fitted on the validation rows' mean over views.
    val_mean = mean_over_views(session, [r.path for r in val], flips, names, size)
    keep, y_val = binary_targets(task, val)
    targets = {"probabilities": (keep, y_val)}
    if "kl_probabilities" in names:
        targets["kl_probabilities"] = (np.ones(len(val), bool), np.array([int(r.label) for r in val]))
    temperatures, calibration = {}, {}
    for name, (rows, y) in targets.items():
        logits = np.log(np.maximum(val_mean[name][rows], TINY))
        temperatures[name] = round(fit_temperature(logits, y), 6)
        calibration[name] = {"temperature": temperatures[name],
                             "validation": temperature_report(logits, y, temperatures[name])}
    log.info("temperatures on the mean over %s: %s", flips, temperatures)

    wrapped = wrap_with_flips(proto, flips, temperatures)
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / "model.onnx"
        onnx.save(wrapped, str(candidate))
        if candidate.stat().st_size > MAX_MODEL_BYTES:
            raise ValueError(f"the wrapped model is {candidate.stat().st_size} bytes, over {MAX_MODEL_BYTES}")
        parity = tta_parity(candidate, session, val[:PARITY_IMAGES], flips, temperatures, size)
        log.info("parity with the view-by-view computation on %d validation images: %s",
                 min(PARITY_IMAGES, len(val)), parity)
        outputs = outputs_for(task, val)
        validation = _validation_summary(task, score_outputs(task, val, run_onnx(candidate, [r.path for r in val],
                                                                                 outputs)),
                                         list(card["validation_metrics"]))
        test_outputs = run_onnx(candidate, [r.path for r in test], outputs_for(task, test))
        test_scored = score_outputs(task, test, test_outputs, intervals=True)
        keep_test, y_test = binary_targets(task, test)
        test_targets = {"probabilities": (keep_test, y_test)}
        if "kl_probabilities" in test_outputs:
            test_targets["kl_probabilities"] = (np.ones(len(test), bool), np.array([int(r.label) for r in test]))
        for name, (rows, y) in test_targets.items():
            t = temperatures[name]
            calibration[name]["test"] = temperature_report(logits_of_calibrated(test_outputs[name][rows], t), y, t)
        model_path.write_bytes(candidate.read_bytes())

    previous = {"version": card["version"],
                "temperatures": {head: values["temperature"]
                                 for head, values in card.get("calibration", {}).get("heads", {}).items()},
                "validation_metrics": card["validation_metrics"],
                "test_metrics": {k: v["value"] for k, v in card["metrics"].items()
                                 if isinstance(v, dict) and "value" in v}}
    card["version"] = version
    card["validation_metrics"] = validation
    card["metrics"] = model_card.metrics_section(task, test_scored, mura=card["data"].get("dataset") == "mura")
    card["model_bytes"] = model_path.stat().st_size
    card["architecture"]["test_time_augmentation"] = {
        "views": list(flips),
        "combination": "mean of the views' probabilities, then softmax(log(mean) / T) with T fitted on the "
                       "validation split; CAM = mean of the views' CAMs flipped back",
        "cost": f"{len(flips)} backbone passes per image",
        "command": f"python -m training.tta --task {task} --version {version}",
        "without_tta": previous,
    }
    card["calibration"]["heads"] = calibration
    card["calibration"]["method"] = model_card.CALIBRATION_METHOD_TTA
    card["export"]["tta_parity_max_abs_diff"] = parity
    card["export"]["tta_parity_images"] = min(PARITY_IMAGES, len(val))
    model_card.write(card, model_dir)
    for path in write_plots(replace(SPECS[task], model_dir=model_dir), root):
        log.info("wrote %s", path)
    return card


def tta_parity(wrapped_path: Path, session, records, flips: Sequence[str], temperatures: dict[str, float],
               size: tuple[int, int]) -> dict[str, float]:
    """Max |wrapped graph - view-by-view NumPy| per output; raises if a probability differs by > 1e-4."""
    import onnxruntime as ort

    wrapped = ort.InferenceSession(str(wrapped_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    images = np.stack([load_image(r.path, size=size) for r in records])
    views = view_outputs(session, images, flips, names)
    got = dict(zip(names, wrapped.run(names, {"input": images}), strict=True))
    differences = {}
    for name in names:
        mean = np.mean([v[name] for v in views], axis=0)
        expected = mean if name == CAM else recalibrated(mean, temperatures[name])
        differences[name] = float(np.abs(got[name] - expected).max())
        if name != CAM and differences[name] > PARITY_TOLERANCE:
            raise AssertionError(f"TTA parity failed for {name}: max |diff| {differences[name]:.2e}")
    return differences


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.tta", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=sorted(TASK_FLIPS))
    parser.add_argument("--data", help="dataset root (default: DRTECH_DATA_DIR or ../shared/data)")
    parser.add_argument("--model-dir", type=Path, help="model folder (default: services/<task>/model)")
    parser.add_argument("--version", required=True, help="the wrapped model's version (a new model: a new version)")
    args = parser.parse_args(argv)
    if not re.fullmatch(VERSION_PATTERN, args.version):
        parser.error(f"--version {args.version!r}: use letters, digits, '.', '+' or '-' (e.g. 2026.11.3)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    card = apply(args.task, args.model_dir or SPECS[args.task].model_dir, data_dir(args.data), args.version)
    print(json.dumps({k: v["value"] for k, v in card["metrics"].items() if isinstance(v, dict) and "value" in v}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
