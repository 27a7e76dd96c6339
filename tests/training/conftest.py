"""The training tier: tests that need TensorFlow/Keras (the training extra). `make test` runs it;
`make test-fast` (the unit tier) does not. Every test here carries the `training` marker, so
`pytest -m "not training"` leaves the tier out wherever it is collected from."""

from __future__ import annotations

from pathlib import Path

import pytest

TRAINING_TIER = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if TRAINING_TIER in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.training)
