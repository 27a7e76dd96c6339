"""How fast `training.finetune` trains, and what in its step costs: run before spending a lent GPU.

    [KERAS_BACKEND=torch|jax|tensorflow] python -m benchmarks.train_step [--task skin]
        [--batch-sizes 64 128] [--steps 10] [--weights DIR]

Builds the very classifier and trainer `training.finetune` trains (our MobileNetV2, every block
trainable, BatchNorm frozen, uint8 input scaled on the device, the task's augmentation layers),
compiled as `finetune.fit` compiles it, and times `train_on_batch` on random images after warm-up
steps (the first steps trace or compile). Each batch size is timed three ways, alternating: the
trainer as trained (`augmented`), the same augmentation through Keras' own RandomRotation,
RandomZoom and RandomTranslation layers (`keras_layers`, the trainer before `training.augment`),
and no augmentation (`plain`). Prints one JSON line per configuration, then one summary line with
the ratios. Not a test.

Measured on the lent H100 (2026-11-26, training.finetune itself, not this command): Keras on
PyTorch ~185 images/s at batch 128; Keras on JAX ~75 images/s per process at batch 64 with two
runs sharing the GPU. At those rates a 15-minute lease trains about two epochs of each task, so
this command exists to find where the step's time goes before the next lease trains.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from training import finetune
from training.tasks import SPECS

NO_AUGMENTATION = finetune.Augmentation(None, 0.0, 0.0, 0.0, "none: the step without augmentation layers")
# augmented: training.finetune's trainer; keras_layers: the same augmentation through Keras' RandomRotation,
# RandomZoom and RandomTranslation (the trainer before training.augment); plain: no augmentation
STEPS = ("augmented", "keras_layers", "plain")
ARCH = "mobilenet_v2_finetuned"


def _keras_layers_trainer(model, augmentation: finetune.Augmentation, input_size: tuple[int, int]):
    """The baseline: the trainer as it was before training.augment, Keras' own three resampling layers."""
    import keras

    width, height = input_size
    inputs = keras.Input((height, width, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    if augmentation.flip:
        x = keras.layers.RandomFlip(augmentation.flip, seed=1)(x)
    x = keras.layers.RandomRotation(augmentation.rotation, fill_mode="reflect", seed=1)(x)
    x = keras.layers.RandomZoom(augmentation.zoom, fill_mode="reflect", seed=1)(x)
    x = keras.layers.RandomTranslation(augmentation.shift, augmentation.shift, fill_mode="reflect", seed=1)(x)
    return keras.Model(inputs, model(x))


def _trainer(task: str, step: str, weights: str | None):
    import keras

    model = finetune.build_model(ARCH, task, weights)
    augmentation, input_size = finetune.AUGMENTATIONS[task], finetune.input_size_of(ARCH)
    if step == "keras_layers":
        trainer = _keras_layers_trainer(model, augmentation, input_size)
    else:
        trainer = finetune.build_trainer(model, augmentation if step == "augmented" else NO_AUGMENTATION, input_size)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"])
    return trainer


def _step_seconds(trainer, pixels: np.ndarray, labels: np.ndarray) -> float:
    started = time.perf_counter()
    trainer.train_on_batch(pixels, labels)      # returns host numbers: the step has finished
    return time.perf_counter() - started


def measure(task: str, batch_sizes: list[int], steps: int, warmup: int, weights: str | None) -> list[dict]:
    rng = np.random.default_rng(0)
    n_classes = finetune.n_training_classes(task)
    trainers = {step: _trainer(task, step, weights) for step in STEPS}
    results = []
    width, height = finetune.input_size_of(ARCH)
    for batch in batch_sizes:
        pixels = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
        labels = rng.integers(0, n_classes, batch)
        for trainer in trainers.values():
            for _ in range(warmup):
                trainer.train_on_batch(pixels, labels)
        times: dict[str, list[float]] = {name: [] for name in trainers}
        for _ in range(steps):
            for name, trainer in trainers.items():
                times[name].append(_step_seconds(trainer, pixels, labels))
        for name, values in times.items():
            median = statistics.median(values)
            results.append({"task": task, "batch": batch, "step": name, "median_step_ms": round(median * 1000, 1),
                            "images_per_s": round(batch / median, 1)})
    return results


def main(argv: list[str] | None = None) -> int:
    import keras

    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="skin", choices=sorted(SPECS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (tracing, compiling)")
    parser.add_argument("--weights", help="MobileNetV2 .npy folder (default: DRTECH_WEIGHTS_DIR or ../shared/weights)")
    args = parser.parse_args(argv)
    results = measure(args.task, args.batch_sizes, args.steps, args.warmup, args.weights)
    device = finetune.device_description()
    for result in results:
        print(json.dumps({**result, "backend": keras.backend.backend(), "device": device}))
    by_key = {(r["batch"], r["step"]): r["images_per_s"] for r in results}
    summary = {
        "backend": keras.backend.backend(), "device": device,
        "images_per_s": {b: {step: by_key[(b, step)] for step in STEPS} for b in args.batch_sizes},
        "augmented_vs_keras_layers": {
            b: round(by_key[(b, "augmented")] / by_key[(b, "keras_layers")], 2) for b in args.batch_sizes},
        "augmentation_share_of_step": {
            b: round(1 - by_key[(b, "augmented")] / by_key[(b, "plain")], 3) for b in args.batch_sizes},
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
