"""training.experiments.ensemble_grid: the operating point is chosen on validation by a stated rule."""

from __future__ import annotations

import numpy as np

from training.experiments.ensemble_grid import choose, decision_scores, figures, group_interval, reported
from training.tasks import SPECS


def test_figures_are_accuracy_and_the_mean_of_the_class_sensitivities():
    y = np.array([0, 0, 0, 1])
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])   # all called class 0

    assert figures(y, scores) == {"accuracy": 0.75, "balanced_accuracy": 0.5}


def test_a_positive_tau_moves_decisions_toward_the_common_class():
    p = np.array([[0.45, 0.55]])
    prior = np.array([0.9, 0.1])

    assert decision_scores(p, p, 0.5, prior, 0.0).argmax() == 1
    assert decision_scores(p, p, 0.5, prior, 0.5).argmax() == 0


def test_the_chosen_point_is_the_most_accurate_that_keeps_balanced_accuracy():
    y = np.array([0] * 8 + [1] * 2)
    # model a finds the rare class, model b is sure of the common one: only a mix keeps both
    a = np.array([[0.4, 0.6]] * 8 + [[0.1, 0.9]] * 2)
    b = np.array([[0.9, 0.1]] * 8 + [[0.9, 0.1]] * 2)
    prior = np.array([0.5, 0.5])

    weight, tau, got = choose(a, b, y, prior, min_balanced=0.9)

    assert got == {"accuracy": 1.0, "balanced_accuracy": 1.0}
    assert 0.0 < weight < 1.0
    assert choose(a, b, y, prior, min_balanced=1.01) is None   # no point reaches it: none is chosen


def test_the_interval_resamples_whole_groups_and_brackets_a_perfect_model():
    y = np.array([0, 0, 1, 1])
    scores = np.eye(2)[y]

    interval = group_interval(y, scores, np.array(["g1", "g1", "g2", "g2"]))

    assert interval["accuracy"] == [1.0, 1.0]


def test_skin_points_also_report_melanoma_sensitivity():
    labels = [label.code for label in SPECS["skin"].labels]
    mel = labels.index("mel")
    y = np.array([mel, mel, labels.index("nv")])
    scores = np.eye(len(labels))[[mel, labels.index("nv"), labels.index("nv")]]   # one melanoma of two missed

    got = reported("skin", y, scores)

    assert got["mel_sensitivity"] == 0.5
    assert got["accuracy"] == 0.6667   # point_values rounds to 4 places
