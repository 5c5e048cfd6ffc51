"""The ZED-style expert: a coding model of real photos that learns from a real/ folder alone, scores
what is more predictable than a real photo as more likely fake, and round-trips through its files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from photos import random_crops
from scipy.ndimage import gaussian_filter
from skimage import data
from sklearn.metrics import roc_auc_score

from coe.core.errors import UserError
from experts.base import ExpertCard, ExpertNotTrainedError, create_expert
from experts.weights import WeightsFormatError
from experts.zed import Coder, integer_grey

PHOTOS = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.stereo_motorcycle()[0]]
SIDE = 128


def crops(seed: int, per_photo: int) -> list[np.ndarray]:
    return random_crops(PHOTOS, SIDE, seed, per_photo)


def smoothed(image: np.ndarray) -> np.ndarray:
    """The photo without its finest detail and noise: more predictable than a camera's pixels."""
    return np.clip(np.rint(gaussian_filter(image.astype(float), sigma=(1.2, 1.2, 0))), 0, 255).astype(np.uint8)


def zed(**params) -> ExpertCard:
    return ExpertCard(name="zed", family="zed", threshold=0.95, params={"max_side": 256, **params})


@pytest.fixture(scope="module")
def trained():
    return create_expert(zed()).fit(crops(0, 4), np.zeros(20, dtype=int))


def test_training_on_real_images_alone_records_held_out_reference_gaps(trained):
    assert trained.meta["n_train"] == {"real": 20, "fake": 0}
    assert len(trained.real_gaps) == 20 and np.all(np.diff(trained.real_gaps) >= 0)
    # Scored by the coder of the other fold, so the reference is not centred on the training set's own fit.
    quantiles = trained.meta["metrics"]["real_gap_quantiles"]
    assert quantiles["5%"] < quantiles["50%"] < quantiles["95%"]


def test_an_image_more_predictable_than_a_photo_scores_as_more_fake(trained):
    held_out = crops(1, 2)
    original = trained.predict_proba(held_out)
    blurred = trained.predict_proba([smoothed(image) for image in held_out])
    assert np.all(blurred > original)
    assert np.median(original) < 0.9 < np.median(blurred)


def test_fakes_are_ignored_unless_the_card_asks_for_them(trained):
    images = crops(0, 4)
    with_fakes = create_expert(zed()).fit(images + [smoothed(i) for i in images[:5]], np.r_[np.zeros(20), np.ones(5)])
    assert with_fakes.meta["n_train"] == {"real": 20, "fake": 0}
    assert with_fakes.head is None
    assert with_fakes.meta["training_data_hash"] == trained.meta["training_data_hash"]


def test_use_fakes_fits_a_head_over_the_levels_gaps(tmp_path):
    images = crops(0, 4)
    expert = create_expert(zed(use_fakes=True)).fit(
        images + [smoothed(image) for image in images], np.r_[np.zeros(20), np.ones(20)]
    )
    assert expert.needs_fakes and expert.head is not None
    held_out = crops(2, 2)
    p = expert.predict_proba(held_out + [smoothed(image) for image in held_out])
    assert roc_auc_score(np.r_[np.zeros(10), np.ones(10)], p) > 0.9
    expert.save(tmp_path / "zed")
    loaded = create_expert(zed(use_fakes=True)).load(tmp_path / "zed")
    np.testing.assert_array_equal(loaded.predict_proba(held_out), expert.predict_proba(held_out))
    with pytest.raises(ValueError, match="needs real"):
        create_expert(zed(use_fakes=True)).fit(images, np.zeros(20))
    # A user's mistake, told in one line by the CLI rather than as a traceback.
    with pytest.raises(UserError, match="at least 4 real training images, got 3"):
        create_expert(zed()).fit(images[:3], np.zeros(3))


def test_save_then_load_gives_identical_probabilities(trained, tmp_path):
    trained.save(tmp_path / "zed")
    assert sorted(p.name for p in (tmp_path / "zed").iterdir()) == ["coder.npz", "meta.json"]
    loaded = create_expert(zed()).load(tmp_path / "zed")
    images = crops(3, 1)
    np.testing.assert_array_equal(loaded.predict_proba(images), trained.predict_proba(images))
    assert loaded.identity == trained.identity
    with pytest.raises(WeightsFormatError, match="levels"):
        create_expert(zed(levels=2)).load(tmp_path / "zed")
    with pytest.raises(ExpertNotTrainedError, match="a real/ folder is enough"):
        create_expert(zed()).predict_proba(images)


def test_flat_small_and_odd_sized_images_give_finite_scores(trained):
    images = [np.full((32, 32, 3), 255, np.uint8), np.zeros((33, 47, 3), np.uint8), crops(4, 1)[0][:41, :63]]
    p = trained.predict_proba(images)
    assert np.all(np.isfinite(p)) and np.all((p > 0) & (p < 1))


def test_the_expected_cost_is_the_mean_cost_of_images_the_model_describes():
    """On noise drawn from the coder's own Laplace, the actual cost matches the expected (the gap is ~0)."""
    rng = np.random.default_rng(5)
    coarse = rng.integers(60, 190, size=(64, 64)).astype(float)
    fine = np.rint(coarse.repeat(2, 0).repeat(2, 1) + rng.laplace(scale=3.0, size=(128, 128)))
    coder = Coder.fit([fine], levels=1)
    nll, entropy = coder.costs(fine)[0]
    assert abs(nll - entropy) < 0.02 and entropy > 3.0


def test_experts_train_learns_from_a_real_folder_alone(tmp_path):
    real = tmp_path / "photos" / "real"
    real.mkdir(parents=True)
    for i, image in enumerate(crops(6, 2)):
        Image.fromarray(image).save(real / f"{i}.jpg", quality=92)
    (real / "broken.jpg").write_bytes(b"\xff\xd8not a jpeg")
    out = tmp_path / "zed-model"
    result = subprocess.run(
        [sys.executable, "-m", "coe", "experts", "train", "zed", "--data", str(tmp_path / "photos"), "--out", str(out),
         "--set", f"home={tmp_path / 'home'}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["skipped"] == {str(real / "broken.jpg"): "not_an_image"}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["family"] == "zed" and meta["n_train"] == {"real": 10, "fake": 0}
    for expert, needed in (("zed", "needs a real/ (or 0_real/) subfolder"), ("dct", "needs a real/ and a fake/")):
        refused = subprocess.run(
            [sys.executable, "-m", "coe", "experts", "train", expert, "--data",
             str(tmp_path / ("nowhere" if expert == "zed" else "photos")), "--set", f"home={tmp_path / 'home'}"],
            capture_output=True, text=True, timeout=120,
        )
        assert refused.returncode == 2 and needed in " ".join(refused.stderr.split()), refused.stderr  # rich wraps long paths


def test_grey_levels_are_integers_cropped_to_whole_blocks():
    grey = integer_grey(np.zeros((37, 50, 3), np.uint8) + 7, max_side=512, levels=3)
    assert grey.shape == (32, 48) and np.array_equal(grey, np.rint(grey))
