"""The router's out-of-distribution distance (training/router.py), checked against the textbook one."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis
from sklearn.covariance import LedoitWolf

from training.router import LABELS, Mahalanobis, proportion


def clusters(seed: int = 0, per_class: int = 200, dims: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dims, dims))
    labels = np.repeat(np.arange(len(LABELS)), per_class)
    centres = rng.normal(0, 4, (len(LABELS), dims))
    return centres[labels] + rng.normal(size=(len(labels), dims)) @ mixing, labels


def test_with_every_component_kept_it_is_the_exact_mahalanobis_distance_to_the_nearest_class() -> None:
    features, labels = clusters()
    ood = Mahalanobis(features, labels, components=features.shape[1])
    means = np.stack([features[labels == k].mean(axis=0) for k in range(len(LABELS))])
    precision = np.linalg.inv(LedoitWolf().fit(features - means[labels]).covariance_)
    probes = np.vstack([features[:5], features[:5] + 30.0])
    expected = [min(mahalanobis(x, mean, precision) ** 2 for mean in means) for x in probes]
    np.testing.assert_allclose(ood.distance(probes), expected, rtol=1e-4)


def test_fewer_components_still_put_far_away_points_far_beyond_the_training_points() -> None:
    points, point_labels = clusters(seed=1, per_class=400)
    features, labels = points[::2], point_labels[::2]          # fitted on half
    unseen = points[1::2]                                      # the other half: same classes, never fitted
    ood = Mahalanobis(features, labels, components=4)
    threshold = np.percentile(ood.distance(features), 99)
    far = features[:20] + np.random.default_rng(2).normal(0, 25, features[:20].shape)
    assert (ood.distance(far) > threshold).all()
    # New images of the known kinds are accepted about as often as the training ones (99%).
    assert (ood.distance(unseen) <= threshold).mean() >= 0.95


def test_a_rate_of_zero_or_one_still_gets_an_honest_interval() -> None:
    everything = proportion(51, 51)
    assert everything["value"] == 1.0 and everything["ci95_high"] == 1.0
    assert everything["ci95_low"] == pytest.approx(0.930, abs=1e-3)
    assert proportion(0, 900)["ci95_high"] > 0


def test_the_out_of_distribution_set_is_built_offline_and_is_the_one_the_card_measured(monkeypatch) -> None:
    import json
    import socket

    from training.router import DEFAULT_OUT, ood_images

    def no_network(*args, **kwargs):
        raise AssertionError("ood_images tried to open a network connection")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)

    images = ood_images()

    card = json.loads((DEFAULT_OUT / "card.json").read_text(encoding="utf-8"))
    names = [name for name, _ in images]
    assert len(names) == len(set(names)) == card["metrics"]["ood_n"]
    assert set(names) == set(card["metrics"]["ood_ratio_by_image"])
