"""Opportunistic batching: calls that queue while the model is busy share one run, with the same answers."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from services.bone.spec import SPEC as BONE
from services.core.batching import Batcher
from services.core.errors import ModelNotReady
from services.core.runtime import OnnxModel
from tests.serving_models import write_fixture_model


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> OnnxModel:
    # About 0.1 s per run, so calls submitted meanwhile are queued and batched.
    spec = write_fixture_model(BONE, tmp_path_factory.mktemp("slow"), slow_matmuls=40)
    return OnnxModel(spec, intra_op_threads=1)


def images(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.uniform(-1, 1, (224, 224, 3)).astype(np.float32) for _ in range(count)]


def test_concurrent_calls_are_batched_and_each_gets_its_own_answer(slow_model: OnnxModel) -> None:
    batch_sizes: list[int] = []
    batcher = Batcher(slow_model.run, max_batch_size=8, on_batch=lambda size, _: batch_sizes.append(size))
    inputs = images(12)
    try:
        with ThreadPoolExecutor(max_workers=12) as pool:
            results = list(pool.map(batcher.predict, inputs))
    finally:
        batcher.close()
    assert max(batch_sizes) > 1, "concurrent calls never shared a run"
    assert max(batch_sizes) <= 8 and sum(batch_sizes) == 12
    for item, result in zip(inputs, results):
        alone = slow_model.run(item[np.newaxis])
        assert result.prediction.probabilities.shape == (1, 2)
        np.testing.assert_allclose(result.prediction.probabilities, alone.probabilities, atol=1e-5)
        np.testing.assert_allclose(result.prediction.cam, alone.cam, atol=1e-4)
        np.testing.assert_allclose(
            result.prediction.extra["kl_probabilities"], alone.extra["kl_probabilities"], atol=1e-5
        )


def test_a_lone_call_runs_at_once_as_a_batch_of_one(slow_model: OnnxModel) -> None:
    batcher = Batcher(slow_model.run, max_batch_size=8)
    try:
        result = batcher.predict(images(1)[0])
    finally:
        batcher.close()
    assert result.batch_size == 1 and result.seconds > 0


def test_a_failing_run_fails_every_call_in_its_batch() -> None:
    release = threading.Event()

    def broken(batch: np.ndarray):
        release.wait(5)
        raise RuntimeError("model exploded")

    batcher = Batcher(broken, max_batch_size=4)
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            calls = [pool.submit(batcher.predict, image) for image in images(3)]
            release.set()
            for call in calls:
                with pytest.raises(RuntimeError, match="model exploded"):
                    call.result(timeout=10)
    finally:
        batcher.close()


def test_closed_batcher_refuses_new_calls(slow_model: OnnxModel) -> None:
    batcher = Batcher(slow_model.run, max_batch_size=2)
    batcher.close()
    with pytest.raises(ModelNotReady):
        batcher.predict(images(1)[0])
