"""Test-time augmentation (TTA) over symmetric views, built into a shipped model's ONNX graph.

    python -m training.tta --task {skin,bone} [--data DIR] [--model-dir services/T/model] --version V

A dermatoscopic image has no up or left: every flip and quarter turn of it shows the same lesion
(skin: the 8 views of the square, a transposition and/or a flip of the model input; a transposed
input is the photo turned by 90 degrees and then preprocessed, tests/unit/test_training_tta.py).
The training photos are all 4:3 landscape, squashed to the square input, so a turned view is
stretched across where the training images were stretched along, as a portrait upload would be:
the 8 views were chosen over the 4 flips on validation (balanced accuracy 0.718 vs 0.701), not
assumed. A knee radiograph is the mirror image of the other knee (bone: the image and its
left/right mirror). Chest films are not flipped: the heart has a side.

The wrapped graph keeps the serving contract (one `input`, the same outputs and shapes), so the
serving core, the batcher and the gateway do not change; each image costs one backbone pass per
view. Inside it: the views are stacked on the batch axis, run through the original graph, split
back, the CAMs turned back to the image's orientation, and per output the mean over views is
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
import os
import re
import shlex
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from training import card as model_card
from training.calibration import fit_temperature, logits_of_calibrated, temperature_report
from training.evaluate import binary_targets, outputs_for, records_from_split_csv, score_outputs
from training.export import MAX_MODEL_BYTES, PARITY_TOLERANCE, parity_sample
from training.features import FLIP_AXES, TRANSPOSE, VIEWS, apply_view, load_image, undo_view, view_parts
from training.inference import run_onnx
from training.model_plots import write_plots
from training.paths import VERSION_PATTERN, data_dir
from training.tasks import SPECS

log = logging.getLogger("training.tta")

# The views that leave the diagnosis unchanged, per task (see the module docstring): a view is an
# optional transposition (rows <-> columns: with a flip, a 90-degree rotation) followed by a flip.
TASK_VIEWS: dict[str, tuple[str, ...]] = {
    "skin": VIEWS,
    "bone": ("none", "horizontal"),
}
METADATA_KEY = "drtech.test_time_augmentation"
CAM = "cam"
PARITY_CHUNK = 16
# Probabilities that underflowed to 0 are clipped here before the log (as calibration.logits_of_calibrated).
TINY = float(np.finfo(np.float32).tiny)


def is_wrapped(proto) -> bool:
    return any(prop.key == METADATA_KEY for prop in proto.metadata_props)


def _opset(proto) -> int:
    return max(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))


def check_views(proto, views: Sequence[str]) -> None:
    """Raise ValueError unless `views` are distinct known views that fit `proto`'s input (a
    transposed view needs a square one) and `proto` is an original model (not wrapped, no `tta/` names)."""
    if is_wrapped(proto):
        raise ValueError("this model already averages over views; wrap the original model")
    names = [n.name for n in proto.graph.node] + [t for n in proto.graph.node for t in (*n.input, *n.output)]
    names += [i.name for i in proto.graph.initializer]
    if any(name.startswith("tta/") for name in names):
        raise ValueError("the model already has names starting with 'tta/', which the wrapper uses")
    if not views or len(set(views)) != len(views):
        raise ValueError(f"views must be distinct, got {list(views)}")
    transposed = any(view_parts(view)[0] for view in views)
    if [i.name for i in proto.graph.input] != ["input"]:
        raise ValueError(f"expected one graph input named 'input', got {[i.name for i in proto.graph.input]}")
    height, width = (d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:3])
    if transposed and not (height and height == width):
        raise ValueError(f"a transposed view needs a square input, this model's is {height}x{width}")


def wrap_with_views(proto, views: Sequence[str], temperatures: dict[str, float]):
    """A copy of the ONNX model `proto` that averages its outputs over `views` of each image.

    `temperatures`: {probability output name: T} for every output but `cam`; each becomes
    softmax(log(mean over views) / T). The CAM output is the mean of the views' CAMs, each turned
    back. Raises ValueError for a model already wrapped, an unknown view, a transposed view of a
    non-square input or a missing temperature.
    """
    import onnx
    from onnx import helper, numpy_helper

    check_views(proto, views)
    parts_of = {view: view_parts(view) for view in views}
    outputs = [o.name for o in proto.graph.output]
    missing = sorted(set(outputs) - {CAM} - set(temperatures))
    if missing or any(not (t > 0 and np.isfinite(t)) for t in temperatures.values()):
        raise ValueError(f"need a positive temperature for every probability output: missing {missing}, "
                         f"given {temperatures}")

    wrapped = onnx.ModelProto()
    wrapped.CopyFrom(proto)
    graph = wrapped.graph
    # The original graph now reads the stacked views and writes to inner names.
    inner = {name: f"tta/inner/{name}" for name in ["input", *outputs]}
    for node in graph.node:
        node.input[:] = [inner.get(name, name) for name in node.input]
        node.output[:] = [inner.get(name, name) for name in node.output]
    del graph.value_info[:]

    initializers = [
        numpy_helper.from_array(np.array([np.iinfo(np.int64).min], dtype=np.int64), "tta/int64_min"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "tta/minus_one"),
        numpy_helper.from_array(np.array(TINY, dtype=np.float32), "tta/tiny"),
    ]
    for axis in sorted({axis + 1 for _, flip in parts_of.values() for axis in FLIP_AXES[flip]}):
        initializers.append(numpy_helper.from_array(np.array([axis], dtype=np.int64), f"tta/axis_{axis}"))

    def view_node(nodes: list, source: str, view: str, name: str, undo: bool = False) -> str:
        """Nodes appended to `nodes` that turn `source` into `view` (or back, with `undo`)."""
        transposed, flip = parts_of[view]
        current = source

        def transpose() -> None:
            nonlocal current
            nodes.append(helper.make_node("Transpose", [current], [f"{name}/transpose"], perm=list(TRANSPOSE),
                                          name=f"{name}/transpose"))
            current = f"{name}/transpose"

        if transposed and not undo:
            transpose()
        for axis in (a + 1 for a in FLIP_AXES[flip]):
            target = f"{name}/axis_{axis}"
            nodes.append(helper.make_node(
                "Slice", [current, "tta/minus_one", "tta/int64_min", f"tta/axis_{axis}", "tta/minus_one"],
                [target], name=target))
            current = target
        if transposed and undo:
            transpose()
        return current

    input_nodes: list = []
    view_inputs = [view_node(input_nodes, "input", view, f"tta/view_{i}") for i, view in enumerate(views)]
    input_nodes.append(helper.make_node("Concat", view_inputs, [inner["input"]], axis=0, name="tta/views"))
    output_nodes: list = []
    split_extra = {"num_outputs": len(views)} if _opset(proto) >= 18 else {}
    for output in outputs:
        parts = [f"tta/{output}/view_{i}" for i in range(len(views))]
        output_nodes.append(helper.make_node("Split", [inner[output]], parts, axis=0, name=f"tta/{output}/split",
                                             **split_extra))
        if output == CAM:
            back = [view_node(output_nodes, part, view, f"{part}/back", undo=True)
                    for part, view in zip(parts, views, strict=True)]
            output_nodes.append(helper.make_node("Mean", back, [output], name="tta/cam/mean"))
            continue
        temperature = f"tta/{output}/temperature"
        initializers.append(numpy_helper.from_array(np.array(temperatures[output], dtype=np.float32), temperature))
        output_nodes += [
            helper.make_node("Mean", parts, [f"tta/{output}/mean"], name=f"tta/{output}/mean"),
            helper.make_node("Max", [f"tta/{output}/mean", "tta/tiny"], [f"tta/{output}/clipped"],
                             name=f"tta/{output}/clip"),
            helper.make_node("Log", [f"tta/{output}/clipped"], [f"tta/{output}/log"], name=f"tta/{output}/log"),
            helper.make_node("Div", [f"tta/{output}/log", temperature], [f"tta/{output}/scaled"],
                             name=f"tta/{output}/temperature_scaling"),
            helper.make_node("Softmax", [f"tta/{output}/scaled"], [output], axis=-1, name=f"tta/{output}/softmax"),
        ]
    # Topological order: the views first, then the original graph, then the averaging.
    original = list(graph.node)
    del graph.node[:]
    graph.node.extend(input_nodes + original + output_nodes)
    graph.initializer.extend(initializers)
    wrapped.metadata_props.append(onnx.StringStringEntryProto(
        key=METADATA_KEY, value=json.dumps({"views": list(views), "temperatures": temperatures})))
    onnx.checker.check_model(wrapped)
    return wrapped


def original_model(proto):
    """The model `wrap_with_views` wrapped, as it was (one view, its own outputs)."""
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


def view_outputs(session, images: np.ndarray, views: Sequence[str], names: Sequence[str]) -> list[dict[str, np.ndarray]]:
    """The original model's outputs for each view of `images` (CAMs turned back)."""
    per_view = []
    for view in views:
        values = dict(zip(names, session.run(list(names), {"input": np.ascontiguousarray(apply_view(images, view))}),
                          strict=True))
        if CAM in values:
            values[CAM] = undo_view(values[CAM], view)
        per_view.append(values)
    return per_view


def recalibrated(mean_probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(mean p) / T), in NumPy: what the wrapped graph computes."""
    scaled = np.log(np.maximum(mean_probabilities, TINY)) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    e = np.exp(scaled)
    return e / e.sum(axis=1, keepdims=True)


def mean_over_views(session, paths: Sequence[Path], views: Sequence[str], names: Sequence[str],
                    size: tuple[int, int], batch: int = 32) -> dict[str, np.ndarray]:
    """{output: mean over `views`} of the original model for the images at `paths`."""
    collected: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, len(paths), batch):
        images = np.stack([load_image(p, size=size) for p in paths[start:start + batch]])
        per_view = view_outputs(session, images, views, names)
        for name in names:
            collected[name].append(np.mean([v[name] for v in per_view], axis=0))
    return {name: np.concatenate(values) for name, values in collected.items()}


def _head_targets(task: str, records, names: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{probability output: (rows of `records` it is scored on, their targets)}: the binary head
    leaves out what binary_targets excludes (knee KL1); a KL head is scored on every row."""
    rows, y = binary_targets(task, records)
    targets = {"probabilities": (rows, y)}
    if "kl_probabilities" in names:
        targets["kl_probabilities"] = (np.ones(len(records), bool), np.array([int(r.label) for r in records]))
    return targets


def _validation_summary(scored: dict[str, Any], keys: Sequence[str]) -> dict[str, float]:
    return {key: round(float(scored[key]), 4) for key in keys if key in scored}


def apply(task: str, model_dir: Path, root: Path, version: str, command: str | None = None) -> dict[str, Any]:
    """Wrap `model_dir/model.onnx` with the task's views, re-measure and rewrite its card; returns the card.

    `command`: how the card says the model was made (default: this module's command line)."""
    import onnx
    import onnxruntime as ort

    from services.core.runtime import input_size_of

    if task not in TASK_VIEWS:
        raise ValueError(f"{task}: no flip or rotation leaves this diagnosis unchanged, so there is no exact test-time "
                         f"augmentation (tasks with one: {sorted(TASK_VIEWS)})")
    views = TASK_VIEWS[task]
    model_path = model_dir / "model.onnx"
    proto = onnx.load(str(model_path))
    check_views(proto, views)
    card = json.loads((model_dir / "card.json").read_text(encoding="utf-8"))
    if version == card["version"]:
        # The card keeps the one-view model's figures under its own version: two models, two names
        raise ValueError(f"version {version} is the one-view model's own: the wrapped model answers "
                         "differently and needs a new version (or train the one-view model as "
                         f"{version}+one-view)")
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    size = input_size_of(session.get_inputs()[0].shape, model_path)
    val = records_from_split_csv(model_dir / "split.csv", root, "val")
    test = records_from_split_csv(model_dir / "split.csv", root, "test")

    # One temperature per probability output, fitted on the validation rows' mean over views.
    val_mean = mean_over_views(session, [r.path for r in val], views, names, size)
    temperatures, calibration = {}, {}
    for name, (rows, y) in _head_targets(task, val, names).items():
        logits = np.log(np.maximum(val_mean[name][rows], TINY))
        temperatures[name] = round(fit_temperature(logits, y), 6)
        calibration[name] = {"temperature": temperatures[name],
                             "validation": temperature_report(logits, y, temperatures[name])}
    log.info("temperatures on the mean over %s: %s", views, temperatures)

    wrapped = wrap_with_views(proto, views, temperatures)
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / "model.onnx"
        onnx.save(wrapped, str(candidate))
        if candidate.stat().st_size > MAX_MODEL_BYTES:
            raise ValueError(f"the wrapped model is {candidate.stat().st_size} bytes, over {MAX_MODEL_BYTES}")
        checked = parity_sample(val, records_from_split_csv(model_dir / "split.csv", root, "train"))
        parity = tta_parity(candidate, session, checked, views, temperatures, size)
        log.info("parity with the view-by-view computation on %d real images (validation first): %s",
                 len(checked), parity)
        # Scored by running the wrapped file itself (not from val_mean): the figures are the shipped model's.
        val_outputs = run_onnx(candidate, [r.path for r in val], outputs_for(task, val))
        validation = _validation_summary(score_outputs(task, val, val_outputs), list(card["validation_metrics"]))
        test_outputs = run_onnx(candidate, [r.path for r in test], outputs_for(task, test))
        test_scored = score_outputs(task, test, test_outputs, intervals=True)
        for name, (rows, y) in _head_targets(task, test, names).items():
            t = temperatures[name]
            calibration[name]["test"] = temperature_report(logits_of_calibrated(test_outputs[name][rows], t), y, t)
        wrapped_bytes = candidate.read_bytes()

    previous = {"version": card["version"],
                "temperatures": {head: values["temperature"]
                                 for head, values in card.get("calibration", {}).get("heads", {}).items()},
                "validation_metrics": card["validation_metrics"],
                "test_metrics": {k: v["value"] for k, v in card["metrics"].items()
                                 if isinstance(v, dict) and "value" in v}}
    card["version"] = version
    card["validation_metrics"] = validation
    card["metrics"] = model_card.metrics_section(task, test_scored, mura=card["data"].get("dataset") == "mura")
    card["model_bytes"] = len(wrapped_bytes)
    card["architecture"]["test_time_augmentation"] = {
        "views": list(views),
        "combination": "mean of the views' probabilities, then softmax(log(mean) / T) with T fitted on the "
                       "validation split; CAM = mean of the views' CAMs turned back",
        "cost": f"{len(views)} backbone passes per image",
        "command": command or shlex.join(
            ["python", "-m", "training.tta", "--task", task, "--version", version]
            + ([] if model_dir.resolve() == SPECS[task].model_dir.resolve() else ["--model-dir", str(model_dir)])),
        "without_tta": previous,
    }
    card.setdefault("calibration", {"ece_bins": model_card.DEFAULT_BINS, "note": model_card.CALIBRATION_NOTE})
    card["calibration"]["heads"] = calibration
    card["calibration"]["method"] = model_card.CALIBRATION_METHOD_TTA
    card["export"]["tta_parity_max_abs_diff"] = parity
    card["export"]["tta_parity_images"] = len(checked)
    # The model, its card and plots are replaced together, after everything was measured; if any
    # step fails the folder is put back as it was, so the command can simply be run again.
    for stale in model_dir.glob(".*.tmp"):           # left by a run that was killed mid-write
        stale.unlink()
    before = {path: path.read_bytes() for path in model_dir.iterdir() if path.is_file()}
    try:
        _replace_file(model_path, wrapped_bytes)
        model_card.write(card, model_dir)
        for path in write_plots(replace(SPECS[task], model_dir=model_dir), root):
            log.info("wrote %s", path)
    except BaseException:
        for path in model_dir.iterdir():
            if path.is_file() and path not in before:
                path.unlink()
        unrestored = []
        for path, data in before.items():
            try:
                _replace_file(path, data)
            except OSError:
                unrestored.append(path.name)
        if unrestored:
            log.error("could not restore %s in %s: put them back from git", unrestored, model_dir)
        raise
    return card


def _replace_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder (never a half-written file)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def tta_parity(wrapped_path: Path, session, records, views: Sequence[str], temperatures: dict[str, float],
               size: tuple[int, int]) -> dict[str, float]:
    """Max |wrapped graph - view-by-view NumPy| per output; raises if a probability differs by > 1e-4."""
    import onnxruntime as ort

    wrapped = ort.InferenceSession(str(wrapped_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    differences = dict.fromkeys(names, 0.0)
    # In chunks: the wrapped model runs every view of every image of a call at once.
    for start in range(0, len(records), PARITY_CHUNK):
        images = np.stack([load_image(r.path, size=size) for r in records[start:start + PARITY_CHUNK]])
        per_view = view_outputs(session, images, views, names)
        got = dict(zip(names, wrapped.run(names, {"input": images}), strict=True))
        for name in names:
            mean = np.mean([v[name] for v in per_view], axis=0)
            expected = mean if name == CAM else recalibrated(mean, temperatures[name])
            differences[name] = max(differences[name], float(np.abs(got[name] - expected).max()))
    for name in names:
        if name != CAM and differences[name] > PARITY_TOLERANCE:
            raise AssertionError(f"TTA parity failed for {name}: max |diff| {differences[name]:.2e}")
    return differences


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.tta", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=sorted(TASK_VIEWS))
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
    from training.cli import run

    raise SystemExit(run(main))
