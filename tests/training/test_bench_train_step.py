"""benchmarks.train_step runs its three trainers end to end (on a tiny network, so it cannot rot)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.training
keras = pytest.importorskip("keras")

from benchmarks import train_step  # noqa: E402
from training import finetune  # noqa: E402


def test_every_step_is_timed_at_every_batch_size(monkeypatch):
    def tiny(arch, task, weights):
        inputs = keras.Input((24, 32, 3))
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inputs))
        return keras.Model(inputs, keras.layers.Dense(finetune.n_training_classes(task), activation="softmax")(x))

    monkeypatch.setattr(finetune, "build_model", tiny)
    monkeypatch.setattr(finetune, "input_size_of", lambda arch: (32, 24))

    results = train_step.measure("bone", [2, 4], steps=1, warmup=1, weights=None)

    assert [(r["batch"], r["step"]) for r in results] == [(b, s) for b in (2, 4) for s in train_step.STEPS]
    assert all(r["images_per_s"] > 0 for r in results)
