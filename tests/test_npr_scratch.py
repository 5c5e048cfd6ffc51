"""NPR trained from scratch: it learns a decoder's up-sampling trace from real and fake folders,
deterministically, and round-trips through its files and `coe experts train`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from photos import random_crops
from skimage import data
from sklearn.metrics import roc_auc_score

from experts.base import ExpertCard, ExpertNotTrainedError, TrainingDataError, create_expert
from experts.weights import WeightsFormatError

PHOTOS = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
SIDE = 48


def crops(seed: int, per_photo: int) -> list[np.ndarray]:
    return random_crops(PHOTOS, SIDE, seed, per_photo)


def upsampled(image: np.ndarray) -> np.ndarray:
    """A decoder's trace: half the resolution, then 2x nearest up-sampling, the trace NPR reads."""
    half = Image.fromarray(image).resize((SIDE // 2, SIDE // 2), Image.Resampling.BOX)
    return np.asarray(half.resize((SIDE, SIDE), Image.Resampling.NEAREST))


def card(**params) -> ExpertCard:
    small = {"steps": 30, "crop": 32, "pairs_per_step": 4, "learning_rate": 1e-3, "jpeg_share": 0.0,
             "blur_share": 0.0, "device": "cpu", **params}
    return ExpertCard(name="npr_scratch", family="npr_scratch", params=small)


def labelled(seed: int, per_photo: int) -> tuple[list[np.ndarray], np.ndarray]:
    reals = crops(seed, per_photo)
    return reals + [upsampled(image) for image in reals], np.repeat([0, 1], len(reals))


@pytest.fixture(scope="module")
def trained():
    images, labels = labelled(0, 3)
    return create_expert(card()).fit(images, labels)


def test_it_learns_the_up_sampling_trace_on_unseen_crops(trained):
    images, labels = labelled(1, 3)
    assert roc_auc_score(labels, trained.predict_proba(images)) > 0.9
    assert trained.meta["n_train"] == {"real": 12, "fake": 12} and trained.meta["metrics"]["steps"] == 30


def test_training_is_deterministic_for_a_seed(trained):
    images, labels = labelled(0, 3)
    again = create_expert(card()).fit(images, labels)
    other_seed = create_expert(card(seed=1)).fit(images, labels)
    held_out = crops(2, 1)
    np.testing.assert_array_equal(again.predict_proba(held_out), trained.predict_proba(held_out))
    assert not np.array_equal(other_seed.predict_proba(held_out), trained.predict_proba(held_out))


def test_save_then_load_gives_identical_probabilities(trained, tmp_path):
    trained.save(tmp_path / "npr")
    assert sorted(p.name for p in (tmp_path / "npr").iterdir()) == ["meta.json", "npr.safetensors"]
    loaded = create_expert(card()).load(tmp_path / "npr")
    # Odd sides, another size, a flat image: scored at their own size like the published NPR.
    images = [*crops(3, 1), np.zeros((37, 51, 3), np.uint8), crops(4, 1)[0][:41, :47]]
    np.testing.assert_array_equal(loaded.predict_proba(images), trained.predict_proba(images))
    assert loaded.identity == trained.identity
    (tmp_path / "npr" / "npr.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(Exception):
        create_expert(card()).load(tmp_path / "npr")
    with pytest.raises(ExpertNotTrainedError, match="coe experts train npr_scratch"):
        create_expert(card()).predict_proba(images)


def test_weights_of_another_family_are_refused(tmp_path):
    (tmp_path / "npr.safetensors").write_bytes(b"")
    (tmp_path / "meta.json").write_text(json.dumps({"family": "dct"}))
    with pytest.raises(WeightsFormatError, match="not 'npr_scratch'"):
        create_expert(card()).load(tmp_path)


def test_images_smaller_than_the_crop_or_one_class_alone_are_refused():
    reals = crops(0, 1)
    with pytest.raises(TrainingDataError, match="2 real and 2 fake"):
        create_expert(card()).fit(reals, np.zeros(len(reals), dtype=int))
    tiny = [image[:16, :16] for image in reals]
    with pytest.raises(TrainingDataError, match="32x32"):
        create_expert(card()).fit(tiny + tiny, np.repeat([0, 1], len(tiny)))


def test_experts_train_learns_from_real_and_fake_folders(tmp_path):
    images, labels = labelled(5, 1)
    for folder in ("real", "fake"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image).save(tmp_path / "data" / ("fake" if label else "real") / f"{i}.png")
    # A user's own card (experts_dir) with a small training budget wins over the shipped one.
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "npr_scratch.yaml").write_text(card(steps=3).model_dump_json())
    out = tmp_path / "model"
    result = subprocess.run(
        [sys.executable, "-m", "coe", "experts", "train", "npr_scratch", "--data", str(tmp_path / "data"),
         "--out", str(out), "--set", f"home={tmp_path / 'home'}", "--set", f"experts_dir={tmp_path / 'cards'}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["family"] == "npr_scratch" and meta["n_train"] == {"real": 4, "fake": 4}
    assert meta["metrics"]["steps"] == 3
