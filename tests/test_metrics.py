"""Detector, calibration and localization metrics on cases whose answer is known by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from benchmarks.metrics import (
    DETECTOR_METRIC_NAMES,
    correctness,
    detection_scores,
    detector_metrics,
    expected_calibration_error,
    grouped_detector_metrics,
    mask_scores,
)


def test_perfect_separation_scores_one_everywhere():
    p_fake = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    is_fake = np.array([0, 0, 0, 1, 1, 1], dtype=bool)
    metrics = detector_metrics(p_fake, is_fake)
    assert set(metrics) == set(DETECTOR_METRIC_NAMES)
    assert (metrics["n"], metrics["n_real"], metrics["n_fake"]) == (6, 3, 3)
    perfect = ("ap", "auc", "accuracy", "accuracy_best", "tpr", "tnr", "pd_at_far_10", "pd_at_far_5")
    for name in (*perfect, "pd_at_far_1"):
        assert metrics[name] == 1.0, name
    # Every threshold in (0.3, 0.7] is perfect; 0.7 (a score) is the one nearest 0.5.
    assert metrics["best_threshold"] == 0.7


def test_accuracy_tpr_tnr_at_a_threshold_and_the_oracle_threshold():
    # A detector calibrated too low: at 0.5 it calls no fake, at 0.3 it is perfect.
    p_fake = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.45])
    is_fake = np.array([0, 0, 0, 1, 1, 1], dtype=bool)
    metrics = detector_metrics(p_fake, is_fake)
    assert metrics["accuracy"] == 0.5 and metrics["tpr"] == 0.0 and metrics["tnr"] == 1.0
    assert metrics["accuracy_best"] == 1.0 and metrics["best_threshold"] == 0.35
    assert detector_metrics(p_fake, is_fake, threshold=0.35)["accuracy"] == 1.0


def test_best_threshold_can_call_everything_real():
    metrics = detector_metrics(np.array([0.9, 0.8]), np.array([False, False]))
    assert metrics["accuracy"] == 0.0 and metrics["accuracy_best"] == 1.0
    assert metrics["best_threshold"] > 0.9
    assert (np.array([0.9, 0.8]) >= metrics["best_threshold"]).sum() == 0


def test_pd_at_far_on_a_crafted_roc():
    # 100 reals scored 0..99, 10 fakes: their rank among the reals fixes the ROC curve.
    reals = np.arange(100, dtype=float)
    # Fake scores: 4 above every real (caught at FAR 0), 1 between the 2 top reals (caught at
    # FAR 1 %), 2 more above real 95 (caught at FAR 4 %), 1 above real 90 (FAR 9 %), 2 below all.
    fakes = np.array([120, 121, 122, 123, 98.5, 95.5, 95.6, 90.5, -1, -2], dtype=float)
    p_fake = np.concatenate([reals, fakes]) / 200 + 0.02
    is_fake = np.concatenate([np.zeros(100, bool), np.ones(10, bool)])
    metrics = detector_metrics(p_fake, is_fake)
    assert metrics["pd_at_far_1"] == pytest.approx(0.5)
    assert metrics["pd_at_far_5"] == pytest.approx(0.7)
    assert metrics["pd_at_far_10"] == pytest.approx(0.8)


def test_one_class_gives_nan_and_empty_input_gives_n_zero():
    only_fakes = detector_metrics(np.array([0.2, 0.9]), np.array([True, True]))
    for name in ("ap", "auc", "pd_at_far_10", "pd_at_far_5", "pd_at_far_1", "tnr"):
        assert math.isnan(only_fakes[name]), name
    assert only_fakes["tpr"] == 0.5 and only_fakes["n_real"] == 0
    empty = detector_metrics(np.array([]), np.array([], dtype=bool))
    assert empty["n"] == 0 and empty["n_real"] == 0 and empty["n_fake"] == 0
    assert all(math.isnan(value) for name, value in empty.items() if not name.startswith("n"))


def test_detection_scores_agrees_with_detector_metrics():
    rng = np.random.default_rng(0)
    p_fake, is_fake = rng.random(50), rng.random(50) > 0.5
    old, new = detection_scores(p_fake, is_fake), detector_metrics(p_fake, is_fake)
    assert old["accuracy"] == new["accuracy"] and old["auc"] == new["auc"]


def test_ece_of_calibrated_bins_is_zero_and_of_a_constant_one_is_the_share_of_reals():
    # In the bin of 0.2 one image in five is fake, in the bin of 0.8 four in five.
    p_fake = np.array([0.2] * 5 + [0.8] * 5)
    is_fake = np.array([1, 0, 0, 0, 0, 1, 1, 1, 1, 0], dtype=bool)
    assert expected_calibration_error(p_fake, is_fake) == pytest.approx(0.0, abs=1e-12)
    is_fake = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    assert expected_calibration_error(np.ones(10), is_fake) == pytest.approx(0.7)
    assert detector_metrics(np.ones(10), is_fake)["ece"] == pytest.approx(0.7)


def test_ece_refuses_scores_that_are_not_probabilities():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error(np.array([1.5]), np.array([True]))


def test_mask_scores_by_hand():
    predicted = np.zeros((4, 4), bool)
    truth = np.zeros((4, 4), bool)
    predicted[0, :3] = True  # 3 pixels
    truth[0, 1:] = True  # 3 pixels, 2 shared
    scores = mask_scores(predicted, truth)
    assert scores["iou"] == pytest.approx(2 / 4)
    assert scores["f1"] == pytest.approx(2 * 2 / (3 + 3))
    assert mask_scores(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == {"iou": 1.0, "f1": 1.0}
    assert mask_scores(predicted, np.zeros((4, 4), bool)) == {"iou": 0.0, "f1": 0.0}


def test_mask_scores_refuse_different_shapes():
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        mask_scores(np.zeros((4, 4), bool), np.zeros((4, 5), bool))


def test_grouped_metrics_have_one_row_per_group():
    frame = pd.DataFrame(
        {
            "p_fake": [0.1, 0.9, 0.2, 0.8, 0.6, 0.4],
            "label": ["real", "fake", "real", "fake", "real", "fake"],
            "generator": ["gan", "gan", "diffusion", "diffusion", "gan", "gan"],
            "subject": ["human", "human", "human", "animal", "animal", "animal"],
        }
    )
    by_generator = grouped_detector_metrics(frame, ["generator"])
    assert list(by_generator.columns) == ["generator", *DETECTOR_METRIC_NAMES]
    assert by_generator["generator"].tolist() == ["diffusion", "gan"]
    assert by_generator.set_index("generator").loc["gan", "accuracy"] == 0.5
    assert by_generator.set_index("generator").loc["diffusion", "auc"] == 1.0
    both = grouped_detector_metrics(frame, ["generator", "subject"])
    assert len(both) == 4 and both["n"].sum() == 6
    with pytest.raises(ValueError, match="no column"):
        grouped_detector_metrics(frame, ["content"])
    with pytest.raises(ValueError, match="'real' or 'fake'"):
        grouped_detector_metrics(frame.assign(label="yes"), ["generator"])


def test_an_expert_that_failed_is_never_counted_right():
    p_fake = np.array([[0.9, np.nan], [0.2, np.nan]])
    assert correctness(p_fake, np.array([1, 0])).tolist() == [[True, False], [True, False]]
