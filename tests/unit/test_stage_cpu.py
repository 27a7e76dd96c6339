"""Per-stage CPU counters (services/common/stage_cpu.py): what `make bench` reads to split a diagnosis's CPU."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import CollectorRegistry, Counter

from services.common.stage_cpu import STAGE_CPU_HELP, STAGE_CPU_NAME, StageCPU


def _stages(*labels: str) -> tuple[CollectorRegistry, StageCPU]:
    registry = CollectorRegistry()
    counter = Counter(STAGE_CPU_NAME, STAGE_CPU_HELP, [*labels, "stage"], registry=registry)
    return registry, StageCPU(counter, **{label: "pneumonia" for label in labels})


def _burn(cpu_seconds: float) -> None:
    started = time.thread_time()
    while time.thread_time() - started < cpu_seconds:
        sum(range(1000))


def test_a_stage_counts_the_cpu_its_thread_spent_in_it() -> None:
    registry, stages = _stages()
    with stages.stage("decode"):
        _burn(0.03)
    with stages.stage("decode"):
        _burn(0.03)
    value = registry.get_sample_value(f"{STAGE_CPU_NAME}_total", {"stage": "decode"})
    assert value is not None and value >= 0.06
    assert registry.get_sample_value(f"{STAGE_CPU_NAME}_total", {"stage": "model"}) is None   # never timed


def test_waiting_is_not_cpu_and_other_threads_are_not_counted() -> None:
    registry, stages = _stages()
    busy = threading.Thread(target=_burn, args=(0.2,))
    with stages.stage("store"):
        busy.start()
        busy.join()       # 0.2 s of CPU on another thread while this one only waits
        time.sleep(0.05)
    assert registry.get_sample_value(f"{STAGE_CPU_NAME}_total", {"stage": "store"}) < 0.1


def test_a_stage_that_raises_is_still_counted_and_the_error_passes_through() -> None:
    registry, stages = _stages("task")
    with pytest.raises(ValueError, match="corrupt"), stages.stage("decode"):
        _burn(0.01)
        raise ValueError("corrupt pixels")
    value = registry.get_sample_value(f"{STAGE_CPU_NAME}_total", {"task": "pneumonia", "stage": "decode"})
    assert value is not None and value >= 0.01
