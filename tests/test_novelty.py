"""The novelty gate, and routers that answer `out of domain` on images unlike their training images."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from benchmarks.outcomes import OutcomeMatrix
from coe.routing import Samples, evaluate
from router.artifact import META_FILE, RouterMismatchError, has_readable_artifact, load_router, save_router
from router.calibration import PlattCalibration
from router.novelty import NoveltyGate
from router.query import QueryRouter
from router.subject import SubjectRouter
from tests.test_router import EXPERTS, TRAINING, meta, outcomes, subject_outcomes

IDENTITIES = {"a": "1:aa", "b": "1:bb", "c": "1:cc"}


def correlated_gaussian(n: int, dim: int, seed: int) -> np.ndarray:
    """Always the same distribution (its mixing matrix and scales are fixed); `seed` draws its points."""
    layout = np.random.default_rng(1234)
    mixing = layout.normal(size=(dim, dim)) / np.sqrt(dim) + np.eye(dim)
    scales = np.exp(layout.normal(size=dim))
    return (np.random.default_rng(seed).normal(size=(n, dim)) * scales) @ mixing


@pytest.mark.parametrize("dim", [6, 200])
def test_the_gate_flags_far_points_and_about_one_minus_quantile_of_fresh_ones(dim):
    training = correlated_gaussian(800, dim, seed=0)
    gate = NoveltyGate(quantile=0.99).fit(training)
    assert gate.fit(training) is gate
    fresh = correlated_gaussian(2000, dim, seed=1)
    assert 0.003 <= gate.is_novel(fresh).mean() <= 0.025
    assert gate.is_novel(fresh + 4 * training.std(axis=0)).all()
    assert gate.score(fresh + 4 * training.std(axis=0)).min() > gate.threshold_ > np.median(gate.score(fresh))


def test_a_looser_quantile_flags_more():
    training, fresh = correlated_gaussian(800, 6, seed=0), correlated_gaussian(2000, 6, seed=1)
    assert 0.07 <= NoveltyGate(quantile=0.9).fit(training).is_novel(fresh).mean() <= 0.13


def test_the_gate_sees_a_shift_in_a_direction_the_training_images_hardly_vary_in():
    """Where images from elsewhere differ: a projection on the leading components would miss it."""
    training = correlated_gaussian(800, 40, seed=0)
    training[:, -1] = 0.01 * np.random.default_rng(2).normal(size=800)
    fresh = correlated_gaussian(500, 40, seed=1)
    fresh[:, -1] = 0.2
    assert NoveltyGate().fit(training).is_novel(fresh).all()


def test_a_router_gate_on_the_descriptor_columns_ignores_content_columns():
    features, correct = outcomes()
    descriptors = features.shape[1] // 2
    router = QueryRouter(novelty_columns=descriptors).fit(features, correct, EXPERTS, [1.0] * 3)
    fresh = outcomes(seed=1)[0]
    content_moved, descriptors_moved = fresh.copy(), fresh.copy()
    content_moved[:, :-descriptors] += 5.0
    descriptors_moved[:, -descriptors:] += 5.0
    assert router.abstains(content_moved).mean() < 0.04
    assert router.abstains(descriptors_moved).all()


def shifted(features: np.ndarray) -> np.ndarray:
    """Five standard deviations (or more) away along every feature of the routers' training images."""
    return features + 5.0


def fitted(level: str, **settings):
    if level == "query":
        features, correct = outcomes()
        return QueryRouter(**settings).fit(features, correct, EXPERTS, [1.0] * 3), outcomes(seed=1)[0]
    features, subjects, correct = subject_outcomes()
    return SubjectRouter(**settings).fit(features, correct, EXPERTS, [1.0] * 3, subjects=subjects), subject_outcomes(seed=1)[0]


@pytest.mark.parametrize("level", ["query", "subject"])
def test_a_router_abstains_out_of_domain_on_shifted_images_only(level):
    router, fresh = fitted(level)
    far = router.decide(shifted(fresh[:30]), router_id="r")
    assert all(d.abstained and "out of domain" in d.reason for d in far)
    assert all(d.novelty > router.novelty_.threshold_ for d in far)
    assert f"above {router.novelty_.threshold_:.1f}, which 99% of its training images" in far[0].reason
    near = router.decide(fresh, router_id="r")
    assert np.mean([d.abstained for d in near]) < 0.04
    assert all(d.novelty is not None and ("out of domain" in d.reason) == d.abstained for d in near)
    assert np.array_equal(router.abstains(fresh), [d.abstained for d in near])


def test_both_reasons_are_given_when_both_hold():
    router, fresh = fitted("query", abstain_below=0.99)
    (decision,) = router.decide(shifted(fresh[:1]), router_id="r")
    assert decision.abstained and "P(correct)=" in decision.reason and "out of domain" in decision.reason


@pytest.mark.parametrize("level", ["query", "subject"])
def test_without_a_gate_no_image_is_out_of_domain(level):
    router, fresh = fitted(level, novelty_quantile=None)
    assert router.novelty_ is None
    decisions = router.decide(shifted(fresh), router_id="r")
    assert not any(d.abstained for d in decisions) and all(d.novelty is None for d in decisions)
    assert not router.abstains(shifted(fresh)).any()


def test_a_saved_router_keeps_its_gate_and_a_format_3_artifact_is_refused(tmp_path):
    router, fresh = fitted("query")
    save_router(tmp_path / "r", router, meta(novelty_threshold=router.novelty_.threshold_), TRAINING)
    loaded, loaded_meta = load_router(tmp_path / "r", "open_clip/x/1", IDENTITIES)
    assert loaded.novelty_.threshold_ == loaded_meta.novelty_threshold == router.novelty_.threshold_
    assert np.array_equal(loaded.novelty(fresh), router.novelty(fresh))
    assert all(d.abstained for d in loaded.decide(shifted(fresh[:10]), router_id="r"))

    written = tmp_path / "r" / "v1" / META_FILE
    old = json.loads(written.read_text())
    old["format_version"] = 3
    written.write_text(json.dumps(old))
    assert not has_readable_artifact(tmp_path / "r")  # so the default router is rebuilt on first use
    with pytest.raises(RouterMismatchError, match="coe router train.*format 3; this coe reads format 4.*novelty gate"):
        load_router(tmp_path / "r", "open_clip/x/1", IDENTITIES)


def test_evaluation_counts_out_of_domain_abstentions():
    router, fresh = fitted("query")
    features = np.concatenate([fresh[:100], shifted(fresh[100:200])])
    rng = np.random.default_rng(0)
    n = len(features)
    matrix = OutcomeMatrix(
        samples=pd.DataFrame({
            "benchmark": "b", "image_id": [f"{i:064x}" for i in range(n)], "perturbation": "none", "split": "test",
            "path": "x.png", "path_bytes": None, "label": np.where(rng.random(n) < 0.5, "fake", "real"),
            "subject": "s", "generator": "g",
        }),
        experts=EXPERTS, p_fake=rng.random((n, 3)), latency_ms=np.ones((n, 3)),
    )
    calibration = {name: PlattCalibration() for name in EXPERTS}
    evaluation = evaluate(router, meta(calibration=calibration), Samples(matrix, features))
    assert 0.5 <= evaluation.abstained <= 0.54
