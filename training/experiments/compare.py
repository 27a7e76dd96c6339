"""Train registered architectures on the same group split for a few epochs and print one row each.

    python -m training.experiments.compare --task pneumonia --arch pneumonia_cnn_5block --epochs 3
        [--data DIR] [--max-train N] [--arch-weights PATH]

Every architecture gets the task's own split (training.tasks.load_split: the split the shipped
model used), images through the shared preprocessing at the architecture's input size, Adam 1e-3,
balanced class weights, no augmentation, a fixed number of epochs and no model selection. It is
scored on the *validation* split: the test split stays reserved for the exported model at the end
of a real run. Rows: accuracy, balanced accuracy, AUC (decision: arg-max, P > 0.5 for binary),
parameters, training minutes (wall clock, this machine) and inference images/s (Keras predict,
batch 32, after a warm-up). Transfer architectures whose pretrained weights are not available
here (MobileNet v1, InceptionResNetV2) are refused without --arch-weights: trained from random
weights they would not be the original's model.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from services.core.preprocessing import to_model_input
from training.architectures import ARCHITECTURES, Architecture
from training.heads import class_weights
from training.metrics import binary_metrics, multiclass_metrics, point_values
from training.paths import data_dir
from training.splits import SEED, SplitRecord
from training.tasks import SPECS, label_index, load_split

log = logging.getLogger("training.experiments.compare")
NEEDS_PRETRAINED = {"bone_mobilenet_v1", "skin_inception_resnet_v2"}
HEADER = ("| architecture | task | train images | epochs | val accuracy | val balanced accuracy | val AUC "
          "| parameters | training minutes | inference images/s |")
RULE = "|---|---|---|---|---|---|---|---|---|---|"


@dataclass(frozen=True)
class Row:
    architecture: str
    task: str
    train_images: int
    epochs: int
    accuracy: float
    balanced_accuracy: float
    auc: float
    parameters: int
    training_minutes: float
    images_per_second: float

    def markdown(self) -> str:
        return (f"| {self.architecture} | {self.task} | {self.train_images} | {self.epochs} "
                f"| {self.accuracy:.4f} | {self.balanced_accuracy:.4f} | {self.auc:.4f} "
                f"| {self.parameters:,} "
                f"| {self.training_minutes:.1f} | {self.images_per_second:.1f} |")


def load_arrays(
    task: str, items: Sequence[SplitRecord], size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, h, w, 3) in [-1, 1] via the serving preprocessing, and label indices; records
    without a label for the task (bone KL1) are left out."""
    images, labels = [], []
    for item in items:
        index = label_index(task, item.record.label)
        if index is None:
            continue
        with Image.open(item.record.path) as image:
            image.load()
            images.append(to_model_input(image, size))
        labels.append(index)
    return np.stack(images), np.asarray(labels)


def _subsample(items: list[SplitRecord], limit: int | None, seed: int) -> list[SplitRecord]:
    if limit is None or len(items) <= limit:
        return items
    chosen = np.random.default_rng(seed).choice(len(items), limit, replace=False)
    return [items[i] for i in sorted(chosen)]


def _as_two_columns(p: np.ndarray) -> np.ndarray:
    return np.stack([1 - p[:, 0], p[:, 0]], axis=1) if p.shape[1] == 1 else p


def compare(
    name: str, task: str, split: Sequence[SplitRecord], epochs: int, batch_size: int = 32,
    max_train: int | None = None, weights: str | None = None, seed: int = SEED,
) -> Row:
    """Train architecture `name` on the split's train rows for `epochs`, score it on the val rows."""
    import keras

    arch: Architecture = ARCHITECTURES[name]
    if arch.task not in (task, "any"):
        raise ValueError(f"{name} is a {arch.task} architecture, not {task}")
    if name in NEEDS_PRETRAINED and weights is None:
        raise ValueError(f"{name} is a transfer model: pass --arch-weights with its pretrained weight file")
    labels = SPECS[task].label_codes
    train = _subsample([s for s in split if s.split == "train"], max_train, seed)
    x_train, y_train = load_arrays(task, train, arch.input_size)
    x_val, y_val = load_arrays(task, [s for s in split if s.split == "val"], arch.input_size)
    log.info("%s: %d train / %d val images at %s", name, len(y_train), len(y_val), arch.input_size)

    keras.utils.set_random_seed(seed)
    kwargs = {"n_classes": len(labels), "input_size": arch.input_size}
    if weights is not None:
        kwargs["weights"] = weights
    model = arch.build(**kwargs)
    sigmoid = arch.output == "sigmoid"
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss="binary_crossentropy" if sigmoid else "sparse_categorical_crossentropy")
    started = time.perf_counter()
    # Progress goes to the log (stderr); stdout carries only the table.
    progress = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: log.info("%s epoch %d/%d: loss %.4f", name, epoch + 1, epochs,
                                                  logs["loss"])
    )
    model.fit(x_train, y_train.astype("float32") if sigmoid else y_train, epochs=epochs,
              batch_size=batch_size, class_weight=class_weights(y_train, len(labels)), shuffle=True,
              verbose=0, callbacks=[progress])
    training_minutes = (time.perf_counter() - started) / 60

    model.predict(x_val[:batch_size], batch_size=batch_size, verbose=0)          # warm-up
    started = time.perf_counter()
    p_val = _as_two_columns(model.predict(x_val, batch_size=batch_size, verbose=0))
    images_per_second = len(x_val) / (time.perf_counter() - started)

    metrics = binary_metrics() if len(labels) == 2 else multiclass_metrics(labels)
    values = point_values(metrics, y_val, p_val)
    return Row(name, task, len(y_train), epochs, values["accuracy"], values["balanced_accuracy"],
               values["auc"], model.count_params(), training_minutes, images_per_second)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.experiments.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=sorted(SPECS))
    parser.add_argument("--arch", action="append", required=True, choices=sorted(ARCHITECTURES),
                        help="architecture to train (repeat for several)")
    parser.add_argument("--data", help="dataset root (default: DRTECH_DATA_DIR or ../shared/data)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-train", type=int, help="train on a random subset of this many training images")
    parser.add_argument("--arch-weights",
                        help="pretrained weight file for a transfer architecture (never downloaded)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    split = load_split(args.task, data_dir(args.data))
    rows = [compare(name, args.task, split, args.epochs, args.batch_size, args.max_train, args.arch_weights)
            for name in args.arch]
    print(HEADER)
    print(RULE)
    for row in rows:
        print(row.markdown())
    return 0


if __name__ == "__main__":
    from training.cli import run

    raise SystemExit(run(main))
