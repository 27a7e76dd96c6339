"""The outside images a gate is fitted and measured on are made offline and deterministically, and
what fits never measures."""

from __future__ import annotations

import numpy as np
import pytest

from training import outside_images


@pytest.mark.parametrize("family", outside_images.FAMILIES)
def test_the_same_family_split_and_index_give_the_same_pixels(family: str) -> None:
    first = outside_images.make(family, "measure", 3)
    again = outside_images.make(family, "measure", 3)
    other = outside_images.make(family, "measure", 4)

    assert first.mode == "RGB" and min(first.size) >= 32
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    assert first.size != other.size or not np.array_equal(np.asarray(first), np.asarray(other))


@pytest.mark.parametrize("family", outside_images.FIT_FAMILIES)
def test_fit_and_measure_images_of_a_family_differ(family: str) -> None:
    fit = [np.asarray(outside_images.make(family, "fit", i)) for i in range(3)]
    measure = [np.asarray(outside_images.make(family, "measure", i)) for i in range(3)]

    assert not any(a.shape == b.shape and np.array_equal(a, b) for a in fit for b in measure)


def test_held_out_sources_and_families_never_fit() -> None:
    assert not set(outside_images.FIT_FONTS) & set(outside_images.MEASURE_FONTS)
    assert not set(outside_images.FIT_PHOTOS) & set(outside_images.MEASURE_PHOTOS)
    assert not set(outside_images.FIT_SCANS) & set(outside_images.MEASURE_SCANS)
    assert not set(outside_images.MEASURE_ONLY) & set(outside_images.families("fit"))
    assert set(outside_images.MEASURE_ONLY) <= set(outside_images.families("measure"))
    with pytest.raises(ValueError, match="measure-only"):
        outside_images.make("chart", "fit", 0)


def test_unknown_families_and_splits_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown family"):
        outside_images.make("selfie", "fit", 0)
    with pytest.raises(ValueError, match="split must be"):
        outside_images.make("noise", "test", 0)


def test_images_yields_every_family_of_a_split() -> None:
    made = list(outside_images.images("fit", per_family=1))
    assert [family for family, _, _ in made] == list(outside_images.FIT_FAMILIES)
