"""Train a registered architecture end to end, export it, evaluate it held out, and write its card.

    python -m training.experiments.arch_training --task {skin,pneumonia} --arch NAME [--data DIR]
        [--weights PATH] [--out DIR] [--epochs N] [--batch-size N] [--learning-rate LR] [--patience N]
        [--max-minutes M]

Steps: the task's group split (training.tasks.load_split, written as split.csv) -> the architecture
from training.architectures at its own input size -> training.finetune.fit (augmentation, Adam,
class weights, ReduceLROnPlateau, EarlyStopping, ModelCheckpoint on the validation split) ->
training.export.classifier_to_onnx (Grad-CAM in the graph) with the Keras/ONNX parity check on 128
validation images -> the test rows through the serving runtime (training.evaluate) -> card.json +
card.md (training.card.for_architecture).

An architecture whose weights alone exceed the 15 MiB limit of a shipped model is refused before
training. Bone is refused: training.finetune trains bone on the KL grade and the shipped model's
NORMAL/ABNORMAL head is refit by training.train from those weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.architectures import ARCHITECTURES, Architecture
from training.paths import PROJECT_ROOT, data_dir
from training.splits import SEED, SplitRecord, write_split_csv

log = logging.getLogger("training.experiments.arch_training")
TASKS = ("pneumonia", "skin")
# The originals trained from scratch with Adam's default rate; pretrained backbones are fine-tuned slower.
LEARNING_RATE = {"mobilenet_v2_finetuned": 1e-4, "bone_mobilenet_v1": 1e-4, "skin_inception_resnet_v2": 1e-4}


def check_shippable(name: str, task: str, weights: str | None = None):
    """Build architecture `name` for `task`; refuse a task it is not for, bone, or a model too large
    to ship (before any training time is spent)."""
    from training.export import MAX_MODEL_BYTES
    from training.finetune import build_model

    arch = ARCHITECTURES[name]
    if task not in TASKS:
        raise ValueError(f"{task}: training.experiments.arch_training trains {', '.join(TASKS)}; bone's shipped model "
                         "is built by training.train (KL-grade fine-tuning + a refit NORMAL/ABNORMAL head)")
    if arch.task not in (task, "any"):
        raise ValueError(f"{name} is a {arch.task} architecture, not {task}")
    if arch.output == "sigmoid":
        from training.architectures import build
        model = build(name, n_classes=2, input_size=arch.input_size, weights=weights)
    else:
        model = build_model(name, task, weights)
    size = 4 * model.count_params()
    if size > MAX_MODEL_BYTES:
        raise ValueError(f"{name}: {model.count_params():,} parameters = {size / 2**20:.1f} MiB of float32 "
                         f"weights, over the {MAX_MODEL_BYTES / 2**20:.0f} MiB limit of a shipped model")
    return model


def _two_column_trainer(model):
    """A one-unit sigmoid model as [1 - p, p]: sparse categorical cross-entropy on it is the binary
    cross-entropy the original trained with, so training.finetune.fit can train it unchanged. The
    wrapper shares `model`'s layers and weights."""
    import keras

    p = model.output
    both = keras.layers.Concatenate(name="two_columns")([keras.layers.Rescaling(-1.0, offset=1.0)(p), p])
    return keras.Model(model.input, both, name=f"{model.name}_two_columns")


def run(task: str, name: str, split: Sequence[SplitRecord], root: Path, out: Path, *, epochs: int,
        batch_size: int = 32, learning_rate: float | None = None, patience: int = 6,
        max_minutes: float | None = None, weights: str | None = None, seed: int = SEED) -> dict:
    """Train, export, evaluate and document architecture `name` on `split`; return the card."""
    import keras
    import onnxruntime as ort

    from services.core.preprocessing import scale
    from training import card as model_card
    from training.evaluate import evaluate_records
    from training.export import classifier_parity, classifier_to_onnx, onnx_interface, parity_sample
    from training.finetune import AUGMENTATIONS, Settings, fit, load_pixels

    arch: Architecture = ARCHITECTURES[name]
    keras.utils.set_random_seed(seed)
    model = check_shippable(name, task, weights)
    out.mkdir(parents=True, exist_ok=True)
    write_split_csv(split, out / "split.csv", root)
    settings = Settings(
        task=task, arch=name, epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate or LEARNING_RATE.get(name, 1e-3), class_weight="balanced",
        monitor="val_balanced_accuracy", early_stopping_patience=patience, max_minutes=max_minutes,
        reduce_lr_patience=2, reduce_lr_factor=0.3, seed=seed,
    )
    trained = _two_column_trainer(model) if arch.output == "sigmoid" else model
    record = fit(trained, task, split, out, settings, AUGMENTATIONS[task], arch.input_size)

    onnx_path = classifier_to_onnx(model, out / "model.onnx")
    val = [s for s in split if s.split == "val"]
    sample = parity_sample([s.record.path for s in val], [s.record.path for s in split if s.split == "train"])
    parity_images = scale(load_pixels(sample, arch.input_size))
    parity = classifier_parity(model, onnx_path, parity_images)
    log.info("exported %s (%d bytes); parity %s", onnx_path, onnx_path.stat().st_size, json.dumps(parity))

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    session.run(["probabilities"], {"input": parity_images[:batch_size]})           # warm-up
    started = time.perf_counter()
    for start in range(0, len(parity_images), batch_size):
        session.run(["probabilities"], {"input": parity_images[start:start + batch_size]})
    images_per_second = len(parity_images) / (time.perf_counter() - started)

    validation = evaluate_records(task, onnx_path, [s.record for s in val])
    test = evaluate_records(task, onnx_path, [s.record for s in split if s.split == "test"], intervals=True)
    card = model_card.for_architecture(
        task=task, arch=arch, split=split,
        validation={k: v for k, v in validation.items() if isinstance(v, float)},
        test=test, record=record, parity=parity, parity_images=len(parity_images),
        interface=onnx_interface(onnx_path),
        model_bytes=onnx_path.stat().st_size, data_root=root)
    card["export"]["onnx_runtime_images_per_second"] = round(images_per_second, 1)
    model_card.write(card, out)
    log.info("test: %s", json.dumps({k: v for k, v in test.items() if k != "confusion_matrix"}))
    return card


def main(argv: Sequence[str] | None = None) -> int:
    from training.tasks import SPECS, load_split

    parser = argparse.ArgumentParser(prog="python -m training.experiments.arch_training",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=sorted(SPECS))
    parser.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES))
    parser.add_argument("--data", help="dataset root (default: DRTECH_DATA_DIR or ../shared/data)")
    parser.add_argument("--weights", help="pretrained weights: the MobileNetV2 .npy folder, or a weight file "
                        "for an original transfer architecture (never downloaded)")
    parser.add_argument("--out", type=Path, help="output folder (default: training/runs/<task>-<arch>; "
                        "services/<task>/model ships it)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float,
                        help="Adam learning rate (default 1e-3 for the originals, 1e-4 for pretrained "
                        "backbones)")
    parser.add_argument("--patience", type=int, default=6, help="EarlyStopping patience (epochs)")
    parser.add_argument("--max-minutes", type=float, help="stop after the epoch that passes this wall time")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    root = data_dir(args.data)
    out = args.out or PROJECT_ROOT / "training" / "runs" / f"{args.task}-{args.arch}"
    try:
        check_shippable(args.arch, args.task, args.weights)     # refuse before loading the data
        split = load_split(args.task, root)
        card = run(args.task, args.arch, split, root, out, epochs=args.epochs, batch_size=args.batch_size,
                   learning_rate=args.learning_rate, patience=args.patience, max_minutes=args.max_minutes,
                   weights=args.weights, seed=args.seed)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(out), "metrics": card["metrics"], "model_bytes": card["model_bytes"]}))
    return 0


if __name__ == "__main__":
    from training.cli import run

    raise SystemExit(run(main))
