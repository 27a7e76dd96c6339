"""End-to-end training of a Keras classifier on a task's own split, the way the original trained.

    python -m training.finetune --task {bone,skin,pneumonia} [--arch mobilenet_v2_finetuned]
        [--data DIR] [--weights DIR] [--epochs N] [--batch-size N] [--input-size N] [--out DIR]

Adam, class weights for imbalance, the task's augmentations (random flips / rotation / zoom /
shift, applied to the training batches only), ReduceLROnPlateau, EarlyStopping and
ModelCheckpoint on a validation score, seeded, Keras progress bars (one line per epoch when the
output is not a terminal). Writes to `--out`: `model.weights.h5` (the best epoch's weights of the
classifier), `history.json` (every epoch's logs, the settings and timings) and
`training_curves.png`.

Only Keras 3, NumPy, Pillow and the serving preprocessing are used, so the same code runs on any
Keras backend: TensorFlow on this CPU, or `KERAS_BACKEND=torch` on a GPU machine that has PyTorch
and no TensorFlow. `training.train --backbone-weights OUT/model.weights.h5` then builds the shipped
model (heads, calibration, ONNX export, held-out evaluation, card) from these weights.

Labels trained on: skin and pneumonia their own classes; bone the KL grade 0-4 (all images), from
which the shipped model's normal/abnormal head is refit.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from services.core.preprocessing import resized_rgb
from training import datasets
from training.features import decoded
from training.paths import data_dir
from training.splits import (
    SEED,
    SplitRecord,
    assert_no_group_leakage,
    assert_trained_on_split,
    read_split_csv,
    write_split_csv,
)
from training.architectures import FINETUNED
from training.tasks import SPECS, TRAINING, label_index, load_split, uses_mura

log = logging.getLogger("training.finetune")


@dataclass(frozen=True)
class Augmentation:
    """Random transforms of training images (Keras preprocessing layers, active only in training)."""

    flip: str | None        # "horizontal", "vertical", "horizontal_and_vertical" or None
    rotation: float         # fraction of a full turn, e.g. 10/360 for +-10 degrees
    zoom: float             # +- fraction
    shift: float            # +- fraction of width and height
    source: str             # what the original did and why ours differs, if it does
    acquisition: bool = False   # training.augment.RandomAcquisition: exposure, contrast, blur, noise, resolution


# The original's augmentations, read from its notebooks, adjusted where anatomy says otherwise.
AUGMENTATIONS: dict[str, Augmentation] = {
    "skin": Augmentation(
        "horizontal_and_vertical", 0.5, 0.1, 0.1,
        "original (HAM10000 Keras kernel): rotation 10 deg, zoom 0.1, shifts 0.1, no flips; ours adds "
        "flips and any rotation, since a dermatoscopic image has no up or left"),
    "bone": Augmentation(
        "horizontal", 10 / 360, 0.1, 0.05,
        "original (MURA MobileNet): flips and small rotations; ours: left/right flip (left and right "
        "knees are mirror images), rotation 10 deg, zoom 0.1, shift 0.05"),
    "pneumonia": Augmentation(
        None, 10 / 360, 0.15, 0.05,
        "original (Kermany kernel): zoom 0.3 and vertical flips; ours: rotation 10 deg, zoom 0.15, "
        "shift 0.05 and no flips (a flipped chest film puts the heart on the wrong side), and what "
        "differs between acquisitions (gamma, contrast, brightness, blur, resolution, noise)",
        acquisition=True),
}


@dataclass(frozen=True)
class Settings:
    task: str
    arch: str
    epochs: int
    batch_size: int
    learning_rate: float
    class_weight: str           # one of CLASS_WEIGHTS
    monitor: str                # validation score that picks the epoch
    early_stopping_patience: int
    max_minutes: float | None   # wall-clock budget: stop after the epoch that passes it
    reduce_lr_patience: int
    reduce_lr_factor: float
    seed: int
    train_batchnorm: bool = False   # our MobileNetV2's BatchNorm learns (batch statistics in training)
    schedule: str = "plateau"       # one of SCHEDULES


def training_labels(task: str, records: Sequence[SplitRecord]) -> np.ndarray:
    """Integer targets: the KL grade where the task has one (bone), the task's label index otherwise."""
    if TRAINING[task].kl_grades:
        return np.array([int(s.record.label) for s in records])
    return np.array([label_index(task, s.record.label) for s in records])


def n_training_classes(task: str) -> int:
    return len(datasets.KL_GRADES) if TRAINING[task].kl_grades else len(SPECS[task].labels)


def load_pixels(paths: Sequence[Path], size: tuple[int, int], workers: int = 8) -> np.ndarray:
    """uint8 (N, height, width, 3) through the serving preprocessing (decoded in threads)."""
    def one(path: Path) -> np.ndarray:
        with decoded(path) as image:
            return resized_rgb(image, size)

    with ThreadPoolExecutor(workers) as pool:
        return np.stack(list(pool.map(one, paths)))


CLASS_WEIGHTS = ("balanced", "sqrt", "none")
# "plateau": the learning rate drops when the validation score stalls, training stops when it stays
# stalled. "cosine": it falls along half a cosine to zero over exactly `epochs` epochs (no early stop),
# so the last epochs average out the epoch-to-epoch swings a constant rate leaves.
SCHEDULES = ("plateau", "cosine")


def sample_weights(y: np.ndarray, n_classes: int, scheme: str) -> np.ndarray:
    """Per-image weights by class: 'balanced' n / (k * count(class)) as sklearn, 'sqrt' its square root
    (halfway, in log terms, between balanced and none: rare classes still count more, but the
    common one is not given up for them), or 'none' (ones)."""
    if scheme not in CLASS_WEIGHTS:
        raise ValueError(f"unknown class weighting {scheme!r}; expected one of {CLASS_WEIGHTS}")
    if scheme == "none":
        return np.ones(len(y), dtype=np.float32)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    per_class = np.zeros(n_classes)
    per_class[present] = len(y) / (present.sum() * counts[present])
    if scheme == "sqrt":
        per_class = np.sqrt(per_class)
    return per_class[y].astype(np.float32)


def _batches_class():
    import keras

    class Batches(keras.utils.PyDataset):
        """uint8 training images in memory -> shuffled (images, labels[, weights]) batches.

        Every batch is full: the few images left over drop out of this epoch only, and a compiling
        backend (JAX, XLA) traces the training step for one shape, not two.
        """

        def __init__(self, pixels: np.ndarray, y: np.ndarray, weights: np.ndarray | None,
                     batch_size: int, seed: int):
            super().__init__()
            self.pixels, self.y, self.weights, self.batch_size = pixels, y, weights, batch_size
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(y))

        def __len__(self) -> int:
            return max(len(self.y) // self.batch_size, 1)

        def __getitem__(self, index: int):
            rows = np.sort(self.order[index * self.batch_size:(index + 1) * self.batch_size])
            batch = (self.pixels[rows], self.y[rows])
            return batch if self.weights is None else (*batch, self.weights[rows])

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(len(self.y))

    return Batches


def build_trainer(model, augmentation: Augmentation, input_size: tuple[int, int], seed: int = SEED):
    """uint8 image -> [-1, 1] -> random augmentation (training only) -> `model`.

    The classifier itself keeps the serving contract (float input in [-1, 1]); scaling on the
    device keeps the host->device copy in uint8. The random layers draw from `seed` and `seed + 1`:
    two streams, so a flip is not tied to the sign of the same image's rotation.
    """
    import keras

    from training.augment import RandomAcquisition, RandomAffine

    width, height = input_size
    inputs = keras.Input((height, width, 3), dtype="uint8", name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(inputs)
    if augmentation.acquisition:
        x = RandomAcquisition(seed=seed + 2, name="acquisition")(x)
    if augmentation.flip:
        x = keras.layers.RandomFlip(augmentation.flip, seed=seed, name="flip")(x)
    if augmentation.rotation or augmentation.zoom or augmentation.shift:
        # One batched resampling, not Keras' three per-image ones (see training.augment)
        x = RandomAffine(augmentation.rotation, augmentation.zoom, augmentation.shift, seed=seed + 1,
                         name="affine")(x)
    return keras.Model(inputs, model(x), name="trainer")


def balanced_accuracy(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """Mean per-class recall over the classes present in `y`."""
    recalls = [float((predicted[y == c] == c).mean()) for c in range(n_classes) if (y == c).any()]
    return float(np.mean(recalls))


def validation_logs(y: np.ndarray, probabilities: np.ndarray, n_classes: int) -> dict[str, float]:
    """`val_loss` (mean cross-entropy), `val_accuracy` and `val_balanced_accuracy` of one pass."""
    # Clipped as Keras clips (PyTorch, JAX, eager TensorFlow)
    picked = np.clip(probabilities[np.arange(len(y)), y], 1e-7, 1.0)
    predicted = probabilities.argmax(1)
    return {"val_loss": float(-np.log(picked).mean()), "val_accuracy": float((predicted == y).mean()),
            "val_balanced_accuracy": balanced_accuracy(y, predicted, n_classes)}


def _validation_score_callback(pixels: np.ndarray, y: np.ndarray, n_classes: int, batch_size: int):
    """Adds `validation_logs` to each epoch's logs (before checkpointing reads them): one prediction
    pass over the validation images, instead of Keras' `validation_data` pass and a second one for
    the balanced accuracy."""
    import keras

    class ValidationScore(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            probabilities = self.model.predict(pixels, batch_size=batch_size, verbose=0)
            scores = validation_logs(y, np.asarray(probabilities, dtype=np.float64), n_classes)
            if logs is not None:
                logs.update(scores)
                # The rate this epoch trained at, schedule or not (ReduceLROnPlateau also writes it)
                logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            log.info("epoch %d: val balanced accuracy %.4f", epoch + 1, scores["val_balanced_accuracy"])

    return ValidationScore()


def _time_limit_callback(minutes: float):
    """Stops training after the first epoch that ends past `minutes` of fitting (a lent GPU's budget)."""
    import keras

    class TimeLimit(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict | None = None) -> None:
            self.started = time.monotonic()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if time.monotonic() - self.started > minutes * 60:
                log.info("stopping after epoch %d: the %.1f-minute budget is spent", epoch + 1, minutes)
                self.model.stop_training = True

    return TimeLimit()


def training_split(task: str, root: Path, split_csv: Path | None = None) -> list[SplitRecord]:
    """The task's own seeded split of `root`, or the rows of `split_csv` (leakage checked): with a
    split.csv only its train and val images are read, so the test images need not be there."""
    if split_csv is None:
        return load_split(task, root)
    split = read_split_csv(split_csv, root)
    assert_no_group_leakage(split)
    # Before any image is read: a split.csv of another task fails here, by name.
    knee = TRAINING[task].kl_grades and not uses_mura(task, root)
    for label in {item.record.label for item in split}:
        if knee and label not in datasets.KL_GRADES:
            raise ValueError(f"{split_csv}: label {label!r} is not a KL grade {datasets.KL_GRADES}: "
                             "not a bone (knee) split")
        try:
            label_index(task, label)
        except ValueError as error:
            raise ValueError(f"{split_csv}: label {label!r} is not a {task} label ({error})") from None
    return split


def build_model(arch: str, task: str, weights: str | None, train_batchnorm: bool = False,
                input_size: tuple[int, int] | None = None):
    """The classifier to train: our MobileNetV2 (blocks 1-16 and Conv_1 trainable, BatchNorm frozen unless
    `train_batchnorm`; at `input_size`, default 224x224) or an original architecture from
    training.architectures (at its own input size)."""
    from training import architectures

    n_classes = n_training_classes(task)
    if arch == "mobilenet_v2_finetuned":
        return architectures.mobilenet_v2_finetuned(n_classes, input_size=input_size or input_size_of(arch),
                                                    weights=weights, finetune_blocks=16,
                                                    train_batchnorm=train_batchnorm)
    if arch == "efficientnet_lite2_finetuned":
        return architectures.efficientnet_lite2_finetuned(n_classes, input_size=input_size or input_size_of(arch),
                                                          weights=weights, train_batchnorm=train_batchnorm)
    if train_batchnorm:
        raise ValueError(f"--train-batchnorm applies to {' and '.join(architectures.FINETUNED)}, not {arch}")
    if input_size:
        raise ValueError(f"--input-size applies to {' and '.join(architectures.FINETUNED)}, not {arch} "
                         "(the original's size)")
    spec = architectures.ARCHITECTURES[arch]
    if spec.output != "softmax":
        raise ValueError(f"{arch} ends in a {spec.output} unit; training.finetune trains softmax classifiers")
    return architectures.build(arch, n_classes=n_classes, input_size=spec.input_size, weights=weights)


def input_size_of(arch: str) -> tuple[int, int]:
    from training.architectures import ARCHITECTURES

    return ARCHITECTURES[arch].input_size


def learning_rate(settings: Settings, steps_per_epoch: int):
    """Adam's learning rate: the constant `settings.learning_rate` (ReduceLROnPlateau lowers it), or
    a cosine decay from it to zero over `settings.epochs` epochs."""
    if settings.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {settings.schedule!r}; expected one of {SCHEDULES}")
    if settings.schedule == "plateau":
        return settings.learning_rate
    import keras

    return keras.optimizers.schedules.CosineDecay(settings.learning_rate,
                                                  decay_steps=settings.epochs * steps_per_epoch)


def fit(
    model, task: str, split: Sequence[SplitRecord], out: Path, settings: Settings,
    augmentation: Augmentation, input_size: tuple[int, int],
) -> dict:
    """Train `model` end-to-end on the train rows of `split`, pick the epoch on the val rows.

    Returns the history record (also written to out/history.json); the best weights are in
    `model` and in out/model.weights.h5.
    """
    import keras

    keras.utils.set_random_seed(settings.seed)
    out.mkdir(parents=True, exist_ok=True)
    n_classes = n_training_classes(task)
    train = [s for s in split if s.split == "train"]
    val = [s for s in split if s.split == "val"]
    started = time.monotonic()
    x_train = load_pixels([s.record.path for s in train], input_size)
    x_val = load_pixels([s.record.path for s in val], input_size)
    load_seconds = time.monotonic() - started
    log.info("loaded %d train + %d val images in %.1f s", len(train), len(val), load_seconds)
    y_train, y_val = training_labels(task, train), training_labels(task, val)

    Batches = _batches_class()
    weights = sample_weights(y_train, n_classes, settings.class_weight)
    train_batches = Batches(x_train, y_train, weights, settings.batch_size, settings.seed)

    trainer = build_trainer(model, augmentation, input_size, settings.seed)
    trainer.compile(optimizer=keras.optimizers.Adam(learning_rate(settings, len(train_batches))),
                    loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    checkpoint = out / "checkpoint.weights.h5"
    mode = "min" if settings.monitor.endswith("loss") else "max"
    callbacks = [
        _validation_score_callback(x_val, y_val, n_classes, settings.batch_size),
        keras.callbacks.ModelCheckpoint(checkpoint, monitor=settings.monitor, mode=mode,
                                        save_best_only=True, save_weights_only=True),
    ]
    if settings.schedule == "plateau":
        callbacks += [
            keras.callbacks.ReduceLROnPlateau(monitor=settings.monitor, mode=mode,
                                              factor=settings.reduce_lr_factor,
                                              patience=settings.reduce_lr_patience, min_lr=1e-7),
            keras.callbacks.EarlyStopping(monitor=settings.monitor, mode=mode,
                                          patience=settings.early_stopping_patience),
        ]
    if settings.max_minutes:
        callbacks.append(_time_limit_callback(settings.max_minutes))
    fit_started = time.monotonic()
    history = trainer.fit(train_batches, epochs=settings.epochs,
                          callbacks=callbacks, verbose=1 if sys.stdout.isatty() else 2)
    fit_seconds = time.monotonic() - fit_started
    trainer.load_weights(checkpoint)    # the best epoch (trainer and model share variables)
    checkpoint.unlink()
    model.save_weights(out / "model.weights.h5")

    logs = {key: [float(v) for v in values] for key, values in history.history.items()}
    scores = logs[settings.monitor]
    best = int(np.argmin(scores) if mode == "min" else np.argmax(scores))
    record = {
        "task": task, "settings": asdict(settings), "augmentation": asdict(augmentation),
        "input_size": list(input_size), "train_images": len(train), "val_images": len(val),
        "best_epoch": best + 1, "epochs_run": len(scores), "best_validation_score": scores[best],
        "history": logs, "load_seconds": round(load_seconds, 1), "fit_seconds": round(fit_seconds, 1),
        "keras_backend": keras.backend.backend(), "device": device_description(),
        "parameters": int(model.count_params()),
    }
    (out / "history.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    _plot_curves(logs, out / "training_curves.png", f"{task} {settings.arch}")
    return record


def _init_history(weights_file: Path) -> dict:
    """The history.json beside a run's weights ({} when there is none)."""
    history = weights_file.parent / "history.json"
    return json.loads(history.read_text(encoding="utf-8")) if history.is_file() else {}


def recovered_from(weights_file: Path) -> dict | None:
    """Where the weights at `weights_file` started, if they descend from weights recovered from an
    exported model (training.recover_weights): that run itself, or any run it continued."""
    record = _init_history(weights_file)
    for run in (record, *record.get("previous_runs", [])):
        if run.get("recovered_from"):
            return run["recovered_from"]
    return None


def _record_previous_run(history_file: Path, init_weights: Path) -> None:
    """A continued run keeps the history of the run(s) it started from, so the card shows them all."""
    record = json.loads(history_file.read_text(encoding="utf-8"))
    record["init_weights"] = str(init_weights)
    previous = init_weights.parent / "history.json"
    if previous.is_file():
        earlier = json.loads(previous.read_text(encoding="utf-8"))
        summary = {key: earlier[key] for key in ("settings", "best_epoch", "epochs_run", "best_validation_score",
                                                  "fit_seconds", "device", "keras_backend")}
        summary["input_size"] = earlier.get("input_size", [224, 224])
        if earlier.get("recovered_from"):
            summary["recovered_from"] = earlier["recovered_from"]
        record["previous_runs"] = [*earlier.get("previous_runs", []), summary]
    history_file.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def device_description() -> str:
    """Where the run trained: the GPU's name under PyTorch or JAX, else the CPU."""
    import keras

    if keras.backend.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} (PyTorch {torch.__version__})"
    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            return f"{device.device_kind} (JAX {jax.__version__})"
    import os
    import platform

    return f"CPU, {os.cpu_count()} cores ({platform.processor() or platform.machine()})"


def _plot_curves(logs: dict[str, list[float]], path: Path, title: str) -> None:
    try:
        from training.plots import training_curves
    except ImportError as error:    # matplotlib missing on a bare GPU machine: the JSON has it all
        log.warning("no training_curves.png: %s", error)
        return
    training_curves(logs, path, title=title)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=sorted(SPECS))
    parser.add_argument("--arch", default="mobilenet_v2_finetuned",
                        help="training.architectures name (softmax output); default our MobileNetV2")
    parser.add_argument("--data", help="dataset root (default: DRTECH_DATA_DIR or ../shared/data)")
    parser.add_argument("--weights", help="pretrained weights: the MobileNetV2 .npy folder (EfficientNet-Lite2's "
                        "for --arch efficientnet_lite2_finetuned; both default to ../shared/weights), or a "
                        "weight file for an original transfer architecture (never downloaded)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (e.g. training/runs/skin)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--class-weight", choices=CLASS_WEIGHTS,
                        help="default: none for bone (exact KL grade accuracy), balanced otherwise")
    parser.add_argument("--split-csv", type=Path,
                        help="train on the train/val rows of this split.csv (e.g. a shipped model's) instead "
                        "of splitting the dataset: the same split, and only those images need to be there")
    parser.add_argument("--patience", type=int, default=6, help="EarlyStopping patience (epochs)")
    parser.add_argument("--init-weights", type=Path,
                        help="start from these model.weights.h5 (a previous run of the same --task/--arch)")
    parser.add_argument("--reduce-lr-patience", type=int, default=2)
    parser.add_argument("--schedule", choices=SCHEDULES, default="plateau",
                        help="plateau: lower the rate when validation stalls, stop early (--patience); "
                        "cosine: decay to zero over exactly --epochs epochs")
    parser.add_argument("--max-minutes", type=float, help="stop after the epoch that passes this wall time")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--train-batchnorm", action="store_true",
                        help="our MobileNetV2's BatchNorm learns too (default: frozen at ImageNet statistics)")
    parser.add_argument("--input-size", type=int, metavar="N",
                        help="train our MobileNetV2 on NxN inputs (default: the --init-weights run's size, "
                        "else 224; e.g. 288 upsamples the 224x224 knee radiographs for a finer last "
                        "feature map, 9x9)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    task = args.task
    # The exact KL grade is scored by accuracy, unweighted; labels, by balanced accuracy.
    kl_grades = TRAINING[task].kl_grades
    class_weight = args.class_weight or ("none" if kl_grades else "balanced")
    settings = Settings(
        task=task, arch=args.arch, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, class_weight=class_weight,
        monitor="val_accuracy" if kl_grades else "val_balanced_accuracy",
        early_stopping_patience=args.patience, max_minutes=args.max_minutes, reduce_lr_patience=args.reduce_lr_patience, reduce_lr_factor=0.3, seed=args.seed,
        train_batchnorm=args.train_batchnorm, schedule=args.schedule,
    )
    if args.schedule == "cosine" and args.max_minutes:
        parser.error("--max-minutes with --schedule cosine would stop before the rate has decayed: "
                     "size the run with --epochs")
    if args.train_batchnorm and args.arch not in FINETUNED:
        parser.error(f"--train-batchnorm applies to {' and '.join(FINETUNED)}, not {args.arch}")
    if args.input_size is not None and args.arch not in FINETUNED:
        parser.error(f"--input-size applies to {' and '.join(FINETUNED)}, not {args.arch} (the original's size)")
    if args.input_size is not None and args.input_size < 32:
        parser.error(f"--input-size {args.input_size}: the network needs at least 32")
    # A continued run keeps the input size of the run it continues unless told otherwise.
    init_size = _init_history(args.init_weights).get("input_size") if args.init_weights else None
    input_size = ((args.input_size, args.input_size) if args.input_size
                  else tuple(init_size) if init_size and args.arch in FINETUNED
                  else input_size_of(args.arch))
    if args.init_weights and args.train_batchnorm and recovered_from(args.init_weights):
        parser.error(f"--train-batchnorm: {args.init_weights} were recovered from an exported model, whose "
                     "BatchNorm is folded into its convolutions (training.recover_weights): continue them "
                     "with BatchNorm frozen")
    root = data_dir(args.data)
    if task == "bone" and uses_mura(task, root):
        parser.error(f"{root} holds MURA-v1.1: training.finetune trains bone on the knee KL grades only; "
                     "train MURA's normal/abnormal model with python -m training.train --task bone")
    split = training_split(task, root, args.split_csv)
    if args.init_weights:
        # The run continued from must have trained and validated on this split's rows too, or its
        # weights may carry images that are validation or test rows here.
        assert_trained_on_split(args.init_weights.parent / "split.csv", split, root)
    args.out.mkdir(parents=True, exist_ok=True)
    write_split_csv(split, args.out / "split.csv", root)
    # Before the model is built: its new head's initial weights and dropout draw from this seed too
    import keras

    keras.utils.set_random_seed(args.seed)
    model = build_model(args.arch, task, args.weights, args.train_batchnorm,
                        input_size if args.arch in FINETUNED else None)
    if args.init_weights:
        model.load_weights(args.init_weights)
    record = fit(model, task, split, args.out, settings, AUGMENTATIONS[task], input_size)
    if args.init_weights:
        _record_previous_run(args.out / "history.json", args.init_weights)
    log.info("best epoch %d of %d: %s %.4f; fit %.0f s on %s", record["best_epoch"], record["epochs_run"],
             settings.monitor, record["best_validation_score"], record["fit_seconds"], record["device"])
    return 0


if __name__ == "__main__":
    from training.cli import run

    raise SystemExit(run(main))
