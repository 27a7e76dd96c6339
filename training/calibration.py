"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"), expected
calibration error, reliability-diagram data, and baking the temperature into an exported model.

One scalar T > 0 divides the logits before the softmax (or sigmoid). It is fitted on the
*validation* split by minimising the negative log-likelihood, so it never sees the test split.
T does not change the arg-max, so accuracy, balanced accuracy and AUC are unchanged; only the
confidence moves (T > 1 softens an over-confident model).

Shapes: multi-class logits are (n, C); binary logits are (n,) or (n, 1), one sigmoid logit of the
positive class (as the pneumonia 5-block CNN outputs). Probabilities follow the same convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

# log T is searched in [-5, 5], i.e. T in [0.0067, 148]: wider than any sensible calibration.
_LOG_T_BOUNDS = (-5.0, 5.0)
DEFAULT_BINS = 15


def _is_binary(values: np.ndarray) -> bool:
    return values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)


def _check(values: np.ndarray, y: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=np.float64)
    y = np.asarray(y)
    if values.ndim not in (1, 2):
        raise ValueError(f"{what} must be (n,), (n, 1) or (n, C), got shape {values.shape}")
    if len(values) != len(y) or len(y) == 0:
        raise ValueError(f"{what} has {len(values)} rows but y has {len(y)} (need the same, > 0)")
    n_classes = 2 if _is_binary(values) else values.shape[1]
    if y.ndim != 1 or not np.all((y >= 0) & (y < n_classes)) or not np.all(y == np.round(y)):
        raise ValueError(f"y must be class indices 0..{n_classes - 1}")
    if _is_binary(values):
        values = values.reshape(-1)
    return values, y.astype(int)


def negative_log_likelihood(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean NLL of the true class under softmax(logits / T) (sigmoid for binary logits)."""
    logits, y = _check(logits, y, "logits")
    scaled = logits / temperature
    if scaled.ndim == 1:
        # log sigmoid(z) for y=1, log sigmoid(-z) for y=0, computed stably.
        return float(-np.mean(-np.logaddexp(0.0, -np.where(y == 1, scaled, -scaled))))
    return float(-np.mean(special.log_softmax(scaled, axis=1)[np.arange(len(y)), y]))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T > 0 minimising the validation NLL of softmax(logits / T) (bounded search on log T)."""
    logits, y = _check(logits, y, "logits")
    result = optimize.minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, y, float(np.exp(log_t))),
        bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6},
    )
    if not result.success:
        raise RuntimeError(f"temperature fit did not converge: {result.message}")
    return float(np.exp(result.x))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities softmax(logits / T), or sigmoid(logit / T) of shape (n,) for binary logits."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = np.asarray(logits, dtype=np.float64)
    if _is_binary(logits):
        return special.expit(logits.reshape(-1) / temperature)
    return special.softmax(logits / temperature, axis=1)


def logits_from_probabilities(probabilities: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Logits equivalent to the model's probabilities (for models that only expose probabilities).

    Softmax: log p (softmax is shift-invariant, so log p differs from the true logits by a constant
    per row). Binary: log(p / (1 - p)). `eps` keeps probabilities that underflowed to 0 finite.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if _is_binary(p):
        return special.logit(np.clip(p.reshape(-1), eps, 1.0 - eps))
    return np.log(np.clip(p, eps, 1.0))


def _confidence_and_correct(probabilities: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, y = _check(probabilities, y, "probabilities")
    if p.ndim == 1:                                  # binary: P(positive), decision at 0.5
        predicted = (p > 0.5).astype(int)   # as served (argmax): a tie is the negative class
        confidence = np.where(predicted == 1, p, 1.0 - p)
    else:
        predicted = p.argmax(axis=1)
        confidence = p.max(axis=1)
    return confidence, (predicted == y).astype(float)


@dataclass(frozen=True)
class ReliabilityBins:
    """Equal-width confidence bins: bin b covers (lower[b], upper[b]] (the first also holds 0).

    accuracy/confidence are the mean correctness / mean confidence of the bin's samples (NaN where
    a bin is empty); count is how many samples fell in it.
    """
    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray


def reliability_bins(probabilities: np.ndarray, y: np.ndarray, n_bins: int = DEFAULT_BINS) -> ReliabilityBins:
    """Bin the predicted-class confidence into `n_bins` equal-width bins over [0, 1]."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    confidence, correct = _confidence_and_correct(probabilities, y)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # (lower, upper] as in Guo et al.: index = ceil(conf * M) - 1, and conf = 0 goes to bin 0.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / count
        mean_confidence = np.bincount(index, weights=confidence, minlength=n_bins) / count
    return ReliabilityBins(edges[:-1], edges[1:], count, accuracy, mean_confidence)


def expected_calibration_error(probabilities: np.ndarray, y: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """ECE = sum over bins of (samples in bin / all samples) * |accuracy(bin) - mean confidence(bin)|.

    Confidence is the probability of the predicted class (for binary: max(p, 1 - p), decision at
    0.5); bins are `n_bins` equal-width intervals (lower, upper] over [0, 1] (see reliability_bins).
    """
    bins = reliability_bins(probabilities, y, n_bins)
    filled = bins.count > 0
    gaps = np.abs(bins.accuracy[filled] - bins.confidence[filled])
    return float(np.sum(bins.count[filled] / bins.count.sum() * gaps))


def with_temperature(model, temperature: float):
    """A Keras model whose last Dense(softmax|sigmoid) divides its logits by T before the activation.

    The new model shares every layer but the last; the last Dense is rebuilt without activation
    (same kernel and bias), followed by Rescaling(1/T) and the original activation, so an ONNX
    export of the returned model carries T. The output layer keeps the original's name.
    """
    import keras

    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    name = getattr(activation, "__name__", None)
    if not isinstance(last, keras.layers.Dense) or name not in ("softmax", "sigmoid"):
        raise ValueError(
            f"the model's last layer must be Dense with softmax or sigmoid activation, got {last.name!r} "
            f"({type(last).__name__}, activation {name})"
        )
    logits_layer = keras.layers.Dense(last.units, name=f"{last.name}_logits")
    logits = logits_layer(last.input)
    logits_layer.set_weights(last.get_weights())
    scaled = keras.layers.Rescaling(1.0 / temperature, name="temperature_scaling")(logits)
    outputs = keras.layers.Activation(name, name=last.name)(scaled)
    return keras.Model(model.inputs, outputs, name=f"{model.name}_calibrated")


def temperature_report(logits: np.ndarray, y: np.ndarray, temperature: float,
                       n_bins: int = DEFAULT_BINS) -> dict[str, float]:
    """n, ECE (`n_bins` bins) and mean NLL of softmax(logits) before and softmax(logits / T) after."""
    before = apply_temperature(logits, 1.0)
    after = apply_temperature(logits, temperature)
    return {
        "n": int(len(y)),
        "ece_before": round(expected_calibration_error(before, y, n_bins), 4),
        "ece_after": round(expected_calibration_error(after, y, n_bins), 4),
        "nll_before": round(negative_log_likelihood(logits, y, 1.0), 4),
        "nll_after": round(negative_log_likelihood(logits, y, temperature), 4),
    }


def logits_of_calibrated(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Logits (up to a constant per row) of a model that outputs softmax(logits / T).

    T * log p = logits + T * const, so apply_temperature(result, 1) is the uncalibrated output and
    apply_temperature(result, T) gives `probabilities` back: the before/after comparison on the
    test split can be made from the shipped (calibrated) model's own outputs. Probabilities that
    underflowed to 0 in float32 are clipped at float32's smallest normal number.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return temperature * logits_from_probabilities(probabilities, eps=float(np.finfo(np.float32).tiny))
