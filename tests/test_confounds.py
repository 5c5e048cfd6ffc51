"""Sharpness as a confound, and AUC over the fake-real pairs that hold it equal."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import ImageFilter
from sklearn.metrics import roc_auc_score

from bad_files import photo
from benchmarks.confounds import PAIR_BLOCK, blur_says_fake, matched_pair_auc, sharpness


def test_sharpness_falls_with_blur_and_is_nought_for_a_flat_image():
    picture = photo(256, 256)
    values = [sharpness(np.asarray(picture.filter(ImageFilter.GaussianBlur(radius)))) for radius in (0, 1, 2, 4)]
    assert values == sorted(values, reverse=True) and values[-1] < values[0] / 3
    assert sharpness(np.full((64, 64, 3), 128, dtype=np.uint8)) == 0.0
    grey = np.asarray(picture.convert("L"))
    assert sharpness(grey) == pytest.approx(sharpness(np.stack([grey] * 3, axis=-1)), rel=1e-4)


def test_with_an_unbounded_caliper_it_is_the_roc_auc_ties_included():
    rng = np.random.default_rng(0)
    is_fake = rng.random(700) < 0.4
    scores = np.round(rng.random(700) + 0.3 * is_fake, 1)  # rounded: many ties
    auc, pairs = matched_pair_auc(scores, is_fake, rng.random(700), caliper=np.inf)
    assert pairs == is_fake.sum() * (~is_fake).sum()
    assert is_fake.sum() > PAIR_BLOCK  # more than one block of fakes
    assert auc == pytest.approx(roc_auc_score(is_fake, scores))


def test_a_score_that_only_reads_the_confound_falls_to_chance_and_a_real_cue_stays():
    rng = np.random.default_rng(1)
    n = 4000
    is_fake = rng.random(n) < 0.5
    log_sharpness = rng.normal(0, 0.5, n) - 0.6 * is_fake  # fakes blurrier, as on wild-dev2
    scores_blur = blur_says_fake(np.exp(log_sharpness))
    cue = rng.normal(0, 1, n) + 1.0 * is_fake  # a cue independent of sharpness
    assert roc_auc_score(is_fake, scores_blur) > 0.75
    blur_auc, pairs = matched_pair_auc(scores_blur, is_fake, log_sharpness, caliper=0.02)
    assert pairs > 10_000 and abs(blur_auc - 0.5) < 0.03
    cue_auc, _ = matched_pair_auc(cue, is_fake, log_sharpness, caliper=0.02)
    assert cue_auc == pytest.approx(roc_auc_score(is_fake, cue), abs=0.03) and cue_auc > 0.7


def test_pairs_outside_the_caliper_or_with_unknown_values_are_not_counted():
    scores = np.array([0.9, 0.1, 0.8, np.nan, 0.2])
    is_fake = np.array([True, False, True, True, False])
    covariate = np.array([0.0, 0.05, 1.0, 0.0, np.nan])
    # Only (fake 0.9 at 0.0, real 0.1 at 0.05) is within 0.1; the NaN score and covariate drop out.
    assert matched_pair_auc(scores, is_fake, covariate, caliper=0.1) == (1.0, 1)
    auc, pairs = matched_pair_auc(scores, is_fake, covariate, caliper=0.01)
    assert np.isnan(auc) and pairs == 0
    with pytest.raises(ValueError, match="differ"):
        matched_pair_auc(scores, is_fake[:3], covariate, caliper=0.1)
