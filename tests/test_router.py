"""The query-level router, its calibration, and router artifacts that refuse the wrong setting."""

from __future__ import annotations

import numpy as np
import pytest

from router.artifact import RouterMeta, RouterMismatchError, load_router, read_router_meta, save_router
from router.calibration import PlattCalibration
from router.query import QueryRouter

EXPERTS = ["a", "b", "c"]


def outcomes(n: int = 600, seed: int = 0):
    """Feature 0 says which of a / b is right; c is right half the time whatever the image."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, 4))
    a_wins = features[:, 0] > 0
    correct = np.stack([a_wins, ~a_wins, rng.random(n) < 0.5], axis=1)
    return features, correct


@pytest.mark.parametrize("model", ["logreg", "lightgbm"])
def test_router_learns_which_expert_is_right_from_features(model):
    features, correct = outcomes()
    router = QueryRouter(model=model).fit(features, correct, EXPERTS, [1.0, 1.0, 1.0])
    assert router.fit(features, correct, EXPERTS, [1.0, 1.0, 1.0]) is router  # fit returns self
    test_features, test_correct = outcomes(seed=1)
    chosen = router.choose(test_features)
    routed_accuracy = test_correct[np.arange(len(chosen)), chosen].mean()
    assert routed_accuracy > 0.9 > test_correct.mean(axis=0).max()


def test_cost_weight_moves_traffic_to_the_cheap_expert():
    features, correct = outcomes()
    costs = [10.0, 10.0, 1.0]
    free = QueryRouter(cost_weight=0.0).fit(features, correct, EXPERTS, costs)
    thrifty = QueryRouter(cost_weight=1.0).fit(features, correct, EXPERTS, costs)
    assert (free.choose(features) == 2).mean() < 0.05
    assert (thrifty.choose(features) == 2).mean() > 0.9


def test_decisions_rank_every_expert_and_abstain_below_the_threshold():
    features, correct = outcomes()
    router = QueryRouter(abstain_below=0.99).fit(features, correct, EXPERTS, [1.0, 2.0, 3.0])
    decisions = router.decide(features[:20], router_id="r1")
    for decision in decisions:
        assert [r.expert for r in decision.ranked][0] == decision.chosen
        assert sorted(r.expert for r in decision.ranked) == EXPERTS
        assert decision.abstained == (decision.ranked[0].p_correct < 0.99)
    assert any(d.abstained for d in decisions) and "abstained" in next(d for d in decisions if d.abstained).reason


def test_an_expert_always_right_or_always_wrong_gets_a_constant():
    features, correct = outcomes()
    correct[:, 2] = True
    router = QueryRouter().fit(features, correct, EXPERTS, [1.0, 1.0, 1.0])
    assert np.all(router.predict_correct(features)[:, 2] == 1.0)
    assert np.all(router.choose(features) == 2)


def test_outcome_shape_mismatch_is_refused():
    features, correct = outcomes()
    with pytest.raises(ValueError, match="do not match"):
        QueryRouter().fit(features[:10], correct, EXPERTS, [1, 1, 1])


def test_platt_calibration_fixes_an_overconfident_expert():
    rng = np.random.default_rng(0)
    is_fake = rng.random(4000) < 0.5
    says_fake = np.where(rng.random(4000) < 0.7, is_fake, ~is_fake)  # right 70 % of the time...
    claimed = np.where(says_fake, 0.99, 0.01)
    calibration = PlattCalibration.fit(claimed, is_fake)  # ...but claims 0.99
    calibrated = calibration.apply(claimed)
    assert abs(calibrated.max() - 0.7) < 0.03 and abs(calibrated.min() - 0.3) < 0.03
    assert PlattCalibration.fit(claimed, np.ones(4000)).apply(0.8) == pytest.approx(0.8)


def meta(**changes) -> RouterMeta:
    fields = dict(
        router_id="query-logreg-test", level="query", extractor_id="open_clip/x/1", feature_dim=4,
        random_weights=False, experts={"a": "1:aa", "b": "1:bb", "c": "1:cc"},
        expert_costs={"a": 1.0, "b": 1.0, "c": 1.0}, training_data_hash="0" * 64, n_train=600,
    )
    return RouterMeta(**{**fields, **changes})


def test_artifact_round_trip_and_refusals(tmp_path):
    features, correct = outcomes()
    router = QueryRouter().fit(features, correct, EXPERTS, [1.0, 1.0, 1.0])
    save_router(tmp_path / "r", router, meta(metrics={"routed.accuracy": 0.9}))
    identities = {"a": "1:aa", "b": "1:bb", "c": "1:cc"}
    loaded, loaded_meta = load_router(tmp_path / "r", "open_clip/x/1", identities)
    assert np.array_equal(loaded.choose(features), router.choose(features))
    assert loaded_meta == read_router_meta(tmp_path / "r") and loaded_meta.metrics["routed.accuracy"] == 0.9
    with pytest.raises(RouterMismatchError, match="trained on features 'open_clip/x/1'.*retrain"):
        load_router(tmp_path / "r", "open_clip/y/2", identities)
    with pytest.raises(RouterMismatchError, match="trained for experts \\['a', 'b', 'c'\\]"):
        load_router(tmp_path / "r", "open_clip/x/1", {"a": "1:aa", "b": "1:bb"})
    with pytest.raises(RouterMismatchError, match="other versions of expert\\(s\\) \\['b'\\]"):
        load_router(tmp_path / "r", "open_clip/x/1", {**identities, "b": "2:bb"})
    with pytest.raises(FileNotFoundError, match="not a router artifact"):
        load_router(tmp_path, "open_clip/x/1", identities)
