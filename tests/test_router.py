"""The query- and subject-level routers, calibration, and versioned router artifacts that refuse
the wrong setting."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from router.artifact import (
    META_FILE,
    TRAINING_SAMPLES_FILE,
    RouterMeta,
    RouterMismatchError,
    TrainingSamples,
    has_readable_artifact,
    load_router,
    read_router_meta,
    read_training_samples,
    save_router,
)
from router.calibration import PlattCalibration
from router.query import QueryRouter
from router.subject import SubjectRouter

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


TRAINING = TrainingSamples.of(["f" * 64, "e" * 64, "f" * 64], ["none", "none", "jpeg:75"])


def meta(**changes) -> RouterMeta:
    fields = dict(
        router_id="query-logreg-test", level="query", model="logreg", extractor_id="open_clip/x/1", feature_dim=4,
        random_weights=False, experts={"a": "1:aa", "b": "1:bb", "c": "1:cc"},
        expert_costs={"a": 1.0, "b": 1.0, "c": 1.0}, training_data_hash=TRAINING.digest, n_train=len(TRAINING.keys),
    )
    return RouterMeta(**{**fields, **changes})


def test_artifact_round_trip_and_refusals(tmp_path):
    features, correct = outcomes()
    router = QueryRouter().fit(features, correct, EXPERTS, [1.0, 1.0, 1.0])
    saved = save_router(tmp_path / "r", router, meta(metrics={"routed.accuracy": 0.9}), TRAINING)
    assert saved == tmp_path / "r" / "v1"
    identities = {"a": "1:aa", "b": "1:bb", "c": "1:cc"}
    loaded, loaded_meta = load_router(tmp_path / "r", "open_clip/x/1", identities)
    assert np.array_equal(loaded.choose(features), router.choose(features))
    assert loaded_meta == read_router_meta(tmp_path / "r") and loaded_meta.metrics["routed.accuracy"] == 0.9
    with pytest.raises(RouterMismatchError, match="trained on features 'open_clip/x/1'.*retrain"):
        load_router(tmp_path / "r", "open_clip/y/2", identities)
    with pytest.raises(RouterMismatchError, match="not configured any more: \\['c'\\].*coe bench run.*coe router train"):
        load_router(tmp_path / "r", "open_clip/x/1", {"a": "1:aa", "b": "1:bb"})
    with pytest.raises(RouterMismatchError, match="other versions of expert\\(s\\) \\['b'\\]"):
        load_router(tmp_path / "r", "open_clip/x/1", {**identities, "b": "2:bb"})
    with pytest.raises(FileNotFoundError, match="not a router artifact"):
        load_router(tmp_path, "open_clip/x/1", identities)


def test_a_router_whose_best_single_expert_matches_the_oracle_still_loads(tmp_path):
    """No oracle gap to close (every expert perfect on the held-out images): the share is undefined."""
    features, correct = outcomes()
    router = QueryRouter().fit(features, correct, EXPERTS, [1.0, 1.0, 1.0])
    save_router(tmp_path / "r", router, meta(metrics={"oracle_gap_closed": float("nan"), "accuracy": 1.0}), TRAINING)
    assert read_router_meta(tmp_path / "r").metrics == {"oracle_gap_closed": None, "accuracy": 1.0}


def test_each_save_is_a_new_version_and_the_folder_loads_the_latest(tmp_path):
    features, correct = outcomes()
    identities = {"a": "1:aa", "b": "1:bb", "c": "1:cc"}
    first = QueryRouter().fit(features, correct, EXPERTS, [1.0, 1.0, 1.0])
    thrifty = QueryRouter(cost_weight=5.0).fit(features, correct, EXPERTS, [1.0, 1.0, 0.1])
    save_router(tmp_path / "r", first, meta(), TRAINING)
    beside = save_router(tmp_path / "r" / "v1", thrifty, meta(), TRAINING)
    assert beside == tmp_path / "r" / "v2"  # a version folder: beside it
    latest, latest_meta = load_router(tmp_path / "r", "open_clip/x/1", identities)
    assert latest_meta.version == 2 and latest.cost_weight == 5.0
    old, old_meta = load_router(tmp_path / "r" / "v1", "open_clip/x/1", identities)
    assert old_meta.version == 1 and old.cost_weight == 0.0


def subject_outcomes(n: int = 900, seed: int = 0):
    """Three subjects told apart by features 0/1; a is right on 'face', b on 'scene', c on neither.
    'rare' has 5 images, below the support threshold."""
    rng = np.random.default_rng(seed)
    subjects = rng.choice(["face", "scene", "object"], size=n)
    subjects[:5] = "rare"
    features = rng.normal(size=(n, 4)) * 0.3
    features[:, 0] += subjects == "face"
    features[:, 1] += subjects == "scene"
    features[:, 2] += subjects == "rare"
    right_a = np.where(subjects == "face", rng.random(n) < 0.9, rng.random(n) < 0.5)
    right_b = np.where(subjects == "scene", rng.random(n) < 0.9, rng.random(n) < 0.45)
    right_c = rng.random(n) < 0.6
    right_b[:5] = True  # b is perfect on the rare subject, but 5 images must not be trusted
    return features, subjects, np.stack([right_a, right_b, right_c], axis=1)


@pytest.mark.parametrize("model", ["logreg", "lightgbm"])
def test_subject_router_derives_its_table_from_outcomes_with_a_support_fallback(model):
    features, subjects, correct = subject_outcomes()
    router = SubjectRouter(model=model, min_support=20).fit(features, correct, EXPERTS, [1.0, 1.0, 1.0], subjects=subjects)
    table = router.table()
    assert table["face"]["expert"] == "a" and table["scene"]["expert"] == "b" and table["object"]["expert"] == "c"
    assert table["rare"]["fallback"] and table["rare"]["support"] == 5
    assert table["rare"]["expert"] == EXPERTS[correct.mean(axis=0).argmax()] != "b"  # the best overall, not b
    test_features, test_subjects, test_correct = subject_outcomes(seed=1)
    assert (router.predict_subject(test_features)[5:] == test_subjects[5:]).mean() > 0.8
    chosen = router.choose(test_features)
    assert test_correct[np.arange(len(chosen)), chosen].mean() > test_correct.mean(axis=0).max() + 0.1
    decisions = router.decide(test_features[:10], router_id="s1")
    for decision, subject in zip(decisions, router.predict_subject(test_features[:10]), strict=True):
        assert decision.level == "subject" and decision.subject == subject
        assert decision.chosen == table[subject]["expert"] and f"subject {subject!r}" in decision.reason


def test_subject_router_cost_weight_and_abstention():
    features, subjects, correct = subject_outcomes()
    thrifty = SubjectRouter(cost_weight=1.0).fit(features, correct, EXPERTS, [10.0, 10.0, 1.0], subjects=subjects)
    assert all(row["expert"] == "c" for row in thrifty.table().values())
    cautious = SubjectRouter(abstain_below=0.7).fit(features, correct, EXPERTS, [1.0, 1.0, 1.0], subjects=subjects)
    decisions = cautious.decide(features[:50], router_id="s2")
    assert {d.abstained for d in decisions} == {True, False}  # object's best is ~0.6, face/scene's ~0.9


def test_an_artifact_of_an_older_format_is_refused_with_what_to_do(tmp_path):
    features, correct = outcomes()
    folder = save_router(tmp_path / "r", QueryRouter().fit(features, correct, EXPERTS, [1.0] * 3), meta(), TRAINING)
    assert has_readable_artifact(tmp_path / "r")
    old = json.loads((folder / META_FILE).read_text())
    del old["model"]
    old["format_version"] = 1
    (folder / META_FILE).write_text(json.dumps(old))
    assert not has_readable_artifact(tmp_path / "r") and not has_readable_artifact(tmp_path / "nothing")
    with pytest.raises(RouterMismatchError, match="older format, or damaged.*coe router train"):
        load_router(tmp_path / "r", "open_clip/x/1", {"a": "1:aa", "b": "1:bb", "c": "1:cc"})


def test_a_format_2_artifact_which_cannot_say_what_it_trained_on_is_refused(tmp_path):
    """What the coe before training lists wrote: every field valid, format 2, no training samples."""
    features, correct = outcomes()
    folder = save_router(tmp_path / "r", QueryRouter().fit(features, correct, EXPERTS, [1.0] * 3), meta(), TRAINING)
    (folder / TRAINING_SAMPLES_FILE).unlink()
    old = json.loads((folder / META_FILE).read_text())
    old["format_version"] = 2
    (folder / META_FILE).write_text(json.dumps(old))
    assert not has_readable_artifact(tmp_path / "r")  # so the default router is rebuilt on first use
    with pytest.raises(RouterMismatchError, match="format 2; this coe reads format 4.*training samples.*novelty gate"):
        read_router_meta(tmp_path / "r")


def test_an_artifact_lists_its_training_samples_under_its_training_data_hash(tmp_path):
    features, correct = outcomes()
    router = QueryRouter().fit(features, correct, EXPERTS, [1.0] * 3)
    folder = save_router(tmp_path / "r", router, meta(), TRAINING)
    listed = read_training_samples(tmp_path / "r")
    assert listed == TRAINING and listed.keys == tuple(sorted(listed.keys)) and len(listed.keys) == 3
    assert listed.image_ids == {"f" * 64, "e" * 64}  # an image is one, whatever its perturbations
    assert (folder / TRAINING_SAMPLES_FILE).read_text() == f"{'e' * 64}|none\n{'f' * 64}|jpeg:75\n{'f' * 64}|none"
    listing = hashlib.sha256((folder / TRAINING_SAMPLES_FILE).read_bytes()).hexdigest()
    assert read_router_meta(folder).training_data_hash == listing

    (folder / TRAINING_SAMPLES_FILE).write_text(f"{'e' * 64}|none")  # an image dropped from the list
    with pytest.raises(RouterMismatchError, match="damaged.*not the training_data_hash"):
        read_training_samples(folder)
    (folder / TRAINING_SAMPLES_FILE).unlink()
    with pytest.raises(RouterMismatchError, match=f"damaged.*no {TRAINING_SAMPLES_FILE}"):
        read_training_samples(folder)
