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


def test_a_lone_call_hands_the_model_its_own_array_not_a_copy() -> None:
    seen: list[np.ndarray] = []

    def run(batch: np.ndarray):  # type: ignore[no-untyped-def]
        seen.append(batch)
        raise RuntimeError("only the input is looked at")

    batcher = Batcher(run, max_batch_size=8)
    item = images(1)[0]
    try:
        with pytest.raises(RuntimeError):
            batcher.predict(item)
    finally:
        batcher.close()
    assert seen[0].shape == (1, *item.shape) and np.shares_memory(seen[0], item)


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


def test_a_run_with_a_malformed_answer_fails_its_calls_and_the_batcher_keeps_serving(
    slow_model: OnnxModel,
) -> None:
    """Nothing after the model run may kill the batching thread: its callers would wait forever."""
    runs = []

    def flaky(batch: np.ndarray):
        runs.append(len(batch))
        return None if len(runs) == 1 else slow_model.run(batch)   # the first answer has no outputs

    def broken_metrics(size: int, seconds: float) -> None:
        raise RuntimeError("metrics exploded")

    batcher = Batcher(flaky, max_batch_size=4, on_batch=broken_metrics)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            with pytest.raises(AttributeError, match="NoneType.* has no attribute"):   # the missing outputs
                pool.submit(batcher.predict, images(1)[0]).result(timeout=10)
            for _ in range(2):   # a failing callback is logged; the answers still come
                assert pool.submit(batcher.predict, images(1)[0]).result(timeout=10).batch_size == 1
    finally:
        batcher.close()


def test_closed_batcher_refuses_new_calls(slow_model: OnnxModel) -> None:
    batcher = Batcher(slow_model.run, max_batch_size=2)
    batcher.close()
    with pytest.raises(ModelNotReady):
        batcher.predict(images(1)[0])


def test_several_workers_run_batches_side_by_side_and_all_stop_on_close() -> None:
    running, peak, lock = 0, 0, threading.Lock()
    both_running = threading.Event()

    def model(batch: np.ndarray):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            if running == 2:
                both_running.set()
        both_running.wait(5)   # a run returns only once another run is in flight beside it
        with lock:
            running -= 1
        from services.core.runtime import Prediction

        return Prediction(np.full((len(batch), 2), 0.5), np.zeros((len(batch), 7, 7, 2)), {})

    batcher = Batcher(model, max_batch_size=1, workers=2)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(batcher.predict, images(2)))
    batcher.close()
    assert peak == 2 and all(result.batch_size == 1 for result in results)
    assert not any(worker.is_alive() for worker in batcher._workers)


def test_max_wait_lets_a_partial_batch_wait_for_calls_that_arrive_soon(slow_model: OnnxModel) -> None:
    sizes: list[int] = []
    batcher = Batcher(lambda batch: slow_model.run(batch), max_batch_size=4, max_wait_seconds=0.5,
                      on_batch=lambda size, _: sizes.append(size))
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            first = pool.submit(batcher.predict, images(1)[0])
            threading.Event().wait(0.1)   # arrives after the first call, within its wait
            second = pool.submit(batcher.predict, images(1)[0])
            first.result(timeout=10), second.result(timeout=10)
    finally:
        batcher.close()
    assert sizes == [2]


def test_a_call_whose_deadline_passes_while_queued_is_dropped_not_run(slow_model: OnnxModel) -> None:
    """Its caller has gone: running it would only delay every call queued behind it."""
    from services.core.errors import ServiceBusy

    runs: list[int] = []

    def counted(batch: np.ndarray):
        runs.append(len(batch))
        return slow_model.run(batch)

    batcher = Batcher(counted, max_batch_size=1)
    first, late = images(2)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            busy = pool.submit(batcher.predict, first)        # holds the model ~0.1 s
            while not runs:                                    # until it is running
                threading.Event().wait(0.005)
            with pytest.raises(ServiceBusy, match="deadline passed"):
                batcher.predict(late, timeout=0.01)
            busy.result()
        assert batcher.predict(first, timeout=30).batch_size == 1    # a live call still runs
    finally:
        batcher.close()
    assert runs == [1, 1]
