"""Heads and fine-tuning keep their Keras history (loss and accuracy per epoch, training and
validation), which training.train draws as training_curves*.png."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.training
pytest.importorskip("tensorflow", reason="TensorFlow (the training extra) is not installed")

SERIES = {"loss", "accuracy", "val_loss", "val_accuracy"}


def _separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return rng.normal(0, 1, (n, 6)).astype(np.float32) + 2.0 * y[:, None], y


def _accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float((p.argmax(1) == y).mean())


def test_a_trained_head_keeps_the_history_of_its_fit():
    from training.heads import train_head

    (x_train, y_train), (x_val, y_val) = _separable(80, 0), _separable(40, 1)

    head = train_head(x_train, y_train, x_val, y_val, 2, _accuracy, max_epochs=4)

    assert set(head.history) == SERIES
    assert all(len(values) == head.epochs == 4 for values in head.history.values())
    assert head.history["loss"][-1] < head.history["loss"][0]


def test_fine_tuning_keeps_training_and_validation_loss_and_accuracy_per_epoch():
    import keras

    from training.heads import finetune_top

    # A two-layer stand-in for MobileNetV2's top: the cached block-13 output -> block 16 -> Conv_1.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((7, 7, 3))
    mid = keras.layers.Conv2D(4, 1, name="block_13_project_BN")(inputs)
    top = keras.layers.Conv2D(4, 1, activation="relu", name="block_16_project")(mid)
    backbone = keras.Model(inputs, keras.layers.Conv2D(8, 1, name="Conv_1")(top))
    rng = np.random.default_rng(0)
    y_train, y_val = rng.integers(0, 2, 64), rng.integers(0, 2, 32)
    mid_train = rng.normal(0, 1, (64, 7, 7, 4)) + y_train[:, None, None, None]
    mid_val = rng.normal(0, 1, (32, 7, 7, 4)) + y_val[:, None, None, None]

    head, info = finetune_top(backbone, mid_train, y_train, mid_val, y_val, 2, 1, _accuracy, epochs=3)

    assert set(head.history) == SERIES
    assert all(len(values) == info["epochs_run"] for values in head.history.values())
    assert head.history["val_accuracy"] == pytest.approx(info["validation_score_per_epoch"], abs=1e-4)
