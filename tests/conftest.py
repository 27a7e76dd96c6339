"""Fixtures shared by every test tier."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import data_dir


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or a skip saying why (a fresh clone has no ../shared)."""
    path = data_dir()
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set DRTECH_DATA_DIR)")
    return path
