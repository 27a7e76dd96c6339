"""Classifier heads on backbone features, and fine-tuning of the top MobileNetV2 blocks.

Head: global average pool -> dropout -> Dense(C, softmax). Trained with Adam, balanced class
weights, early stopping on the validation loss; the L2 strength is chosen on the validation split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sklearn.utils.class_weight import compute_class_weight

log = logging.getLogger(__name__)

DROPOUT = 0.3
L2_GRID = (0.0, 1e-4, 1e-3)


@dataclass
class TrainedHead:
    kernel: np.ndarray          # (1280, C)
    bias: np.ndarray            # (C,)
    l2: float
    val_score: float
    epochs: int
    # Keras History.history of the fit that produced this head (loss, accuracy, val_loss,
    # val_accuracy per epoch), drawn by training.plots.training_curves.
    history: dict[str, list[float]] = field(default_factory=dict)


def class_weights(y: np.ndarray, n_classes: int, balanced: bool = True) -> dict[int, float]:
    if not balanced:
        return {c: 1.0 for c in range(n_classes)}
    present = np.unique(y)
    weights = compute_class_weight("balanced", classes=present, y=y)
    result = {c: 1.0 for c in range(n_classes)}
    result.update({int(c): float(w) for c, w in zip(present, weights, strict=True)})
    return result


def softmax_probabilities(features: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    logits = features @ kernel + bias
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def train_head(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, n_classes: int,
    score: Callable[[np.ndarray, np.ndarray], float], balanced: bool = True, seed: int = 0,
    max_epochs: int = 300,
) -> TrainedHead:
    """Fit dropout + Dense(softmax) on pooled features; pick the L2 with the best validation `score`."""
    import keras

    best: TrainedHead | None = None
    for l2 in L2_GRID:
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([
            keras.Input((x_train.shape[1],)),
            keras.layers.Dropout(DROPOUT),
            keras.layers.Dense(n_classes, activation="softmax",
                               kernel_regularizer=keras.regularizers.L2(l2) if l2 else None),
        ])
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=15, restore_best_weights=True)
        history = model.fit(
            x_train, y_train, validation_data=(x_val, y_val), epochs=max_epochs, batch_size=64,
            class_weight=class_weights(y_train, n_classes, balanced), callbacks=[stop], verbose=0,
        )
        kernel, bias = model.layers[-1].get_weights()
        value = score(y_val, softmax_probabilities(x_val, kernel, bias))
        log.info("head l2=%g: %d epochs, val score %.4f", l2, len(history.history["loss"]), value)
        if best is None or value > best.val_score:
            best = TrainedHead(kernel, bias, l2, value, len(history.history["loss"]),
                               _floats(history.history))
    assert best is not None
    return best


def _floats(history: dict) -> dict[str, list[float]]:
    return {key: [float(v) for v in values] for key, values in history.items()}


# --- fine-tuning the top blocks on cached intermediate activations ------------------------------

LAST_BLOCK = 16
DEFAULT_MID_LAYER = "block_13_project_BN"   # 7x7x160, the input of block 14


def top_model(backbone, mid_layer: str = DEFAULT_MID_LAYER):
    """The backbone from `mid_layer`'s output to the pooled 1280-vector, sharing the backbone's layers
    (so fine-tuning it changes the backbone that is exported)."""
    import keras

    feature_map = keras.Model(backbone.get_layer(mid_layer).output, backbone.output)
    inputs = keras.Input(feature_map.inputs[0].shape[1:])
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(feature_map(inputs)))


def pooled_from_mid(backbone, mid: np.ndarray, batch: int = 256,
                    mid_layer: str = DEFAULT_MID_LAYER) -> np.ndarray:
    """Pooled features from cached `mid_layer` activations through the (possibly fine-tuned) top."""
    return top_model(backbone, mid_layer).predict(mid.astype(np.float32), batch_size=batch, verbose=0)


def _best_on_validation(x_val: np.ndarray, y_val: np.ndarray, score: Callable[[np.ndarray, np.ndarray], float],
                        patience: int):
    """Keras callback: score the validation split each epoch, keep the best weights, stop after
    `patience` epochs without improvement. The (class-weighted) training loss and the task's
    score disagree on imbalanced data, so the score, not the validation loss, decides. The
    validation loss and accuracy of the same predictions are kept for the training curves."""
    import keras

    class BestOnValidation(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.best_score = -np.inf
            self.best_epoch = -1
            self.best_weights = None
            self.history: list[float] = []
            self.val_loss: list[float] = []
            self.val_accuracy: list[float] = []

        def on_epoch_end(self, epoch, logs=None):
            predicted = self.model.predict(x_val, batch_size=256, verbose=0)
            value = score(y_val, predicted)
            self.history.append(round(float(value), 4))
            # Unweighted cross-entropy, as Keras reports val_loss (class weights apply to training only).
            chosen = np.clip(predicted[np.arange(len(y_val)), y_val], 1e-7, 1.0)
            self.val_loss.append(float(-np.log(chosen).mean()))
            self.val_accuracy.append(float((predicted.argmax(1) == y_val).mean()))
            log.info("fine-tune epoch %d: validation score %.4f", epoch + 1, value)
            if value > self.best_score:
                self.best_score, self.best_epoch = value, epoch
                self.best_weights = self.model.get_weights()
            elif epoch - self.best_epoch >= patience:
                self.model.stop_training = True

        def on_train_end(self, logs=None):
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    return BestOnValidation()


def finetune_top(
    backbone, mid_train: np.ndarray, y_train: np.ndarray, mid_val: np.ndarray, y_val: np.ndarray,
    n_classes: int, trainable_blocks: int, score: Callable[[np.ndarray, np.ndarray], float],
    balanced: bool = True, epochs: int = 12, learning_rate: float = 1e-4, seed: int = 0,
    mid_layer: str = DEFAULT_MID_LAYER,
) -> tuple[TrainedHead, dict[str, object]]:
    """Fine-tune the last `trainable_blocks` blocks (+ Conv_1) in place, BatchNorm kept frozen.

    Blocks between `mid_layer` and the first trainable one stay frozen but are still applied (their
    input is the cached `mid_layer` output). Keeps the epoch with the best validation `score`; returns
    the head trained with it and a summary.
    """
    import keras

    keras.utils.set_random_seed(seed)
    first_trainable = LAST_BLOCK - trainable_blocks + 1
    for layer in backbone.layers:
        is_top = layer.name.startswith("Conv_1") or any(
            layer.name.startswith(f"block_{n}_") for n in range(first_trainable, LAST_BLOCK + 1))
        # BatchNorm stays in inference mode with its ImageNet statistics: batches here are small.
        layer.trainable = is_top and not isinstance(layer, keras.layers.BatchNormalization)
    inputs = keras.Input(mid_train.shape[1:])
    x = top_model(backbone, mid_layer)(inputs)
    x = keras.layers.Dropout(DROPOUT)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    best = _best_on_validation(mid_val.astype(np.float32), y_val, score, patience=4)
    fitted = model.fit(
        mid_train.astype(np.float32), y_train, epochs=epochs, batch_size=32,
        class_weight=class_weights(y_train, n_classes, balanced), callbacks=[best], verbose=2,
    )
    for layer in backbone.layers:
        layer.trainable = False
    kernel, bias = model.layers[-1].get_weights()
    history = {**_floats(fitted.history), "val_loss": best.val_loss, "val_accuracy": best.val_accuracy}
    head = TrainedHead(kernel, bias, 0.0, float(best.best_score), best.best_epoch + 1, history)
    return head, {"best_validation_score": round(float(best.best_score), 4), "best_epoch": best.best_epoch + 1,
            "epochs_run": len(best.history), "validation_score_per_epoch": best.history,
            "learning_rate": learning_rate, "class_weight": "balanced" if balanced else "none"}
