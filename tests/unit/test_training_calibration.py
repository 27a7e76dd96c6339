"""Temperature scaling softens over-confident models and leaves calibrated ones alone; ECE is the
documented equal-width-bin formula; the fitted T travels inside the exported ONNX model."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from training.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    logits_from_probabilities,
    logits_of_calibrated,
    negative_log_likelihood,
    reliability_bins,
    temperature_report,
)


def _calibrated_multiclass(n: int = 20000, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true class distribution: labels are drawn from it."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, (n, classes))
    p = special.softmax(logits, axis=1)
    y = np.array([rng.choice(classes, p=row) for row in p])
    return logits, y


def _calibrated_binary(n: int = 20000, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, n)
    y = (rng.uniform(size=n) < special.expit(logits)).astype(int)
    return logits, y


@pytest.mark.parametrize("make", [_calibrated_multiclass, _calibrated_binary])
def test_over_confident_logits_get_a_temperature_above_one_and_a_lower_ece(make):
    logits, y = make()
    over_confident = 3.0 * logits                   # true temperature: 3

    temperature = fit_temperature(over_confident, y)

    assert temperature > 1.0
    assert temperature == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(apply_temperature(over_confident, 1.0), y)
    after = expected_calibration_error(apply_temperature(over_confident, temperature), y)
    assert after < before
    assert after < 0.02
    nll_before = negative_log_likelihood(over_confident, y)
    assert negative_log_likelihood(over_confident, y, temperature) < nll_before


@pytest.mark.parametrize("make", [_calibrated_multiclass, _calibrated_binary])
def test_calibrated_logits_keep_a_temperature_of_about_one(make):
    logits, y = make()

    assert fit_temperature(logits, y) == pytest.approx(1.0, abs=0.06)


def test_the_report_gives_ece_and_nll_before_and_after_the_fitted_temperature():
    logits, y = _calibrated_multiclass(n=3000)
    over_confident = 4.0 * logits
    temperature = fit_temperature(over_confident, y)

    report = temperature_report(over_confident, y, temperature)

    assert set(report) == {"n", "ece_before", "ece_after", "nll_before", "nll_after"}
    assert report["n"] == 3000
    assert report["nll_after"] < report["nll_before"]
    assert report["ece_after"] < report["ece_before"]
    assert report["ece_before"] == pytest.approx(
        expected_calibration_error(apply_temperature(over_confident, 1.0), y, 15), abs=1e-4)


@pytest.mark.parametrize("make", [_calibrated_multiclass, _calibrated_binary])
def test_a_calibrated_models_outputs_give_back_the_uncalibrated_ones(make):
    logits, _ = make(n=200)
    shipped = apply_temperature(logits, 2.0).astype(np.float32)      # what the exported model outputs

    recovered = logits_of_calibrated(shipped, 2.0)

    np.testing.assert_allclose(apply_temperature(recovered, 1.0), apply_temperature(logits, 1.0), atol=1e-4)
    np.testing.assert_allclose(apply_temperature(recovered, 2.0), shipped, atol=1e-6)


def test_temperature_never_changes_the_predicted_class():
    logits, y = _calibrated_multiclass(n=500)

    assert np.array_equal(apply_temperature(logits, 1.0).argmax(1), apply_temperature(logits, 2.7).argmax(1))


def test_ece_of_a_small_example_equals_the_hand_computed_value():
    # 5 bins: (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1]. Confidences .9 right | .75 wrong, .65 right | .55 right.
    # bin (.8,1]:  1 sample, accuracy 1,  confidence .9  -> 1/4 * .1  = .025
    # bin (.6,.8]: 2 samples, accuracy .5, confidence .7 -> 2/4 * .2  = .1
    # bin (.4,.6]: 1 sample, accuracy 1,  confidence .55 -> 1/4 * .45 = .1125
    probabilities = np.array([[0.1, 0.9], [0.25, 0.75], [0.65, 0.35], [0.55, 0.45]])
    y = np.array([1, 0, 0, 0])

    assert expected_calibration_error(probabilities, y, n_bins=5) == pytest.approx(0.2375)
    # the binary form, P(positive) only, is the same model
    assert expected_calibration_error(probabilities[:, 1], y, n_bins=5) == pytest.approx(0.2375)
    bins = reliability_bins(probabilities, y, n_bins=5)
    assert bins.count.tolist() == [0, 0, 1, 2, 1]
    np.testing.assert_allclose(bins.accuracy[2:], [1.0, 0.5, 1.0])
    np.testing.assert_allclose(bins.confidence[2:], [0.55, 0.70, 0.90])
    assert np.isnan(bins.accuracy[0])


def test_probabilities_round_trip_through_logits():
    p = np.array([[0.7, 0.2, 0.1], [0.05, 0.05, 0.9]])

    np.testing.assert_allclose(apply_temperature(logits_from_probabilities(p), 1.0), p)
    binary = np.array([0.2, 0.99])
    np.testing.assert_allclose(apply_temperature(logits_from_probabilities(binary), 1.0), binary)


def test_bad_input_gets_a_clear_error():
    with pytest.raises(ValueError, match="rows"):
        fit_temperature(np.zeros((3, 2)), np.array([0, 1]))
    with pytest.raises(ValueError, match="class indices"):
        fit_temperature(np.zeros((2, 2)), np.array([0, 2]))
    with pytest.raises(ValueError, match="positive"):
        apply_temperature(np.zeros((2, 2)), 0.0)


