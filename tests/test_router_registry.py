"""Every registered router keeps one contract: built by `create_router` from the settings it takes,
fitted with `fit(features, correct, experts, costs, subjects=...)`, it returns itself, answers one
decision per image at its own level, clones and pickles as a scikit-learn estimator, and the
command line and the artifact know its level."""

from __future__ import annotations

import io

import joblib
import numpy as np
import pytest
from pydantic import ValidationError
from sklearn.base import clone
from test_router import meta

from router.base import LEVELS, CostAwareRouter, create_router, register_router, router_levels

EXPERTS = ["spectrum", "dct", "residual"]
REGISTERED = sorted(router_levels())


def outcomes(seed: int = 0, n: int = 120):
    """Two subjects in separable feature clusters; each subject has its own best expert."""
    rng = np.random.default_rng(seed)
    subjects = np.where(np.arange(n) % 2 == 0, "face", "scene")
    features = rng.normal(size=(n, 6)) + (subjects == "face")[:, None] * 3.0
    correct = np.zeros((n, len(EXPERTS)), dtype=bool)
    correct[:, 0] = (subjects == "face") | (rng.random(n) < 0.2)
    correct[:, 1] = (subjects == "scene") | (rng.random(n) < 0.2)
    correct[:, 2] = rng.random(n) < 0.5
    return features, correct, subjects


def test_the_built_in_levels_are_registered():
    assert {"query", "subject"} <= set(REGISTERED)


@pytest.mark.parametrize("level", REGISTERED)
def test_every_router_fits_decides_clones_and_pickles(level):
    features, correct, subjects = outcomes()
    router = create_router(level, model="logreg", cost_weight=0.0, min_support=5, novelty_quantile=None)
    assert isinstance(router, CostAwareRouter) and router.level == level
    assert router.fit(features, correct, EXPERTS, [1.0, 1.0, 1.0], subjects=subjects) is router
    held_out, _, held_subjects = outcomes(seed=1)
    decisions = router.decide(held_out, f"{level}-test")
    assert len(decisions) == len(held_out) and {d.level for d in decisions} == {level}
    chosen = np.array([d.chosen for d in decisions])
    # Each subject's best expert is learnt from the features, whatever the level.
    assert np.mean(chosen[held_subjects == "face"] == "spectrum") > 0.8
    assert np.mean(chosen[held_subjects == "scene"] == "dct") > 0.8
    assert router.predict_correct(held_out).shape == (len(held_out), len(EXPERTS))
    assert clone(router).get_params() == router.get_params()
    buffer = io.BytesIO()
    joblib.dump(router, buffer)
    buffer.seek(0)
    restored = joblib.load(buffer)
    assert [d.chosen for d in restored.decide(held_out, "r")] == list(chosen)


def test_settings_a_level_does_not_take_are_left_out_and_unknown_levels_refused():
    assert "min_support" not in create_router("query", min_support=5).get_params()
    assert create_router("subject", min_support=5).min_support == 5
    with pytest.raises(KeyError, match="unknown router level 'oracle'; known: .*query.*subject"):
        create_router("oracle")


@pytest.mark.parametrize("level", REGISTERED)
def test_the_artifact_records_every_registered_level_and_refuses_others(level):
    assert meta(level=level).level == level
    with pytest.raises(ValidationError, match="no router of level 'oracle' is registered"):
        meta(level="oracle")


def test_a_level_is_registered_once():
    with pytest.raises(ValueError, match="registered twice"):
        register_router("query")(type("Again", (CostAwareRouter,), {}))


def test_an_entry_registered_for_a_block_is_gone_after_it():
    class Trial(CostAwareRouter):
        pass

    with LEVELS.registered("trial", Trial):
        assert router_levels()["trial"] is Trial and Trial.level == "trial"
    assert "trial" not in router_levels()
