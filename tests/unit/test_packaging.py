"""Our own pyproject.toml installs without setuptools' deprecation banners (they print on every
`pip install -e .` and turn into errors on a date the banner names)."""

from __future__ import annotations

import warnings

from setuptools.config.pyprojecttoml import apply_configuration
from setuptools.dist import Distribution

from tests.support import ROOT


def test_the_project_metadata_reads_without_any_setuptools_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")

    assert [f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught] == []
    # The licence as an SPDX expression (PEP 639), not the deprecated {text = ...} table.
    assert dist.metadata.license_expression == "Apache-2.0"
