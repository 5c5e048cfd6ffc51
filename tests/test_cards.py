"""Every expert card, parametrised over the cards in configs/experts (as timm tests its registry):
it validates, names a registered family, and a pretrained expert's cost and resources are the
figures derived from its full-size architecture (experts.sizing), so the card cannot drift."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import ImageFilter

import experts  # noqa: F401  (registers the built-in families)
from bad_files import photo
from coe.config import CONFIG_DIR
from coe.core.yaml_files import load_yaml_model
from experts.base import (
    DeviceParams,
    Expert,
    ExpertCard,
    FileExpert,
    PretrainedExpert,
    TorchParams,
    TrainableExpert,
    create_expert,
    expert_families,
)
from experts.sizing import card_figures
from tests.support.random_checkpoints import WRITERS

CARDS = sorted((CONFIG_DIR / "experts").glob("*.yaml"))
PRETRAINED = [card for card in CARDS if issubclass(expert_families()[yaml.safe_load(card.read_text())["family"]],
                                                     PretrainedExpert)]


@pytest.mark.parametrize("card_file", CARDS, ids=lambda path: path.stem)
def test_card_validates_and_names_a_registered_family(card_file):
    card = load_yaml_model(card_file, ExpertCard)
    assert card.name == card_file.stem and card.family in expert_families()
    expert_families()[card.family].Params.model_validate(card.params)
    assert card.description, "a card says what the expert sees and cites its paper"


@pytest.mark.parametrize("card_file", PRETRAINED, ids=lambda path: path.stem)
def test_pretrained_card_figures_are_derived_from_the_full_size_architecture(card_file):
    card = load_yaml_model(card_file, ExpertCard)
    family = expert_families()[card.family]
    figures = card_figures(family.full_size_footprint(family.Params.model_validate(card.params)))
    assert (card.cost, card.resources) == (figures.cost, figures.resources)
    assert family.published_at.startswith("https://") and family.default_weights


def every_family() -> dict[str, type]:
    """Every family in the experts package, its module imported as a card naming it would."""
    for module in pkgutil.iter_modules(experts.__path__):
        importlib.import_module(f"experts.{module.name}")
    return expert_families()


@pytest.mark.parametrize("family", sorted(every_family()))
def test_every_family_keeps_the_contract(family):
    cls = every_family()[family]
    assert issubclass(cls, (Expert, FileExpert)) and cls.family == family
    assert not inspect.isabstract(cls), f"{family} leaves {sorted(cls.__abstractmethods__)} undefined"
    fields = cls.Params.model_fields
    # The device, precision and batch size of a torch network are the shared model's, which serving
    # relies on to move an expert onto the CPU of a cluster without GPUs.
    if {"device", "dtype", "batch_size"} & set(fields):
        assert issubclass(cls.Params, DeviceParams)
        assert ("dtype" in fields) == issubclass(cls.Params, TorchParams)
    if issubclass(cls, PretrainedExpert):
        assert family in WRITERS, "a pretrained family needs a random-weight checkpoint writer in tests/support"


# Enough to train in a second; what a family needs beyond its card to do so.
QUICK_TRAINING = {"npr_scratch": {"steps": 3, "pairs_per_step": 2, "crop": 32}}


@pytest.mark.parametrize(
    "card_file",
    [card for card in CARDS if issubclass(every_family()[yaml.safe_load(card.read_text())["family"]], TrainableExpert)],
    ids=lambda path: path.stem,
)
def test_every_trainable_expert_scores_probabilities_and_reloads_to_the_same_scores(card_file, tmp_path):
    card = load_yaml_model(card_file, ExpertCard)
    card = card.model_copy(update={"params": {**card.params, **QUICK_TRAINING.get(card.name, {})}})
    picture = photo(96, 80)
    reals = [np.asarray(picture.rotate(angle)) for angle in (0, 90, 180, 270)]
    fakes = [np.asarray(picture.rotate(angle).filter(ImageFilter.GaussianBlur(1.5))) 
             for angle in (0, 90, 180, 270)]
    expert = create_expert(card).fit(reals + fakes, np.array([0] * 4 + [1] * 4))
    scores = expert.predict_proba(reals[:2] + fakes[:2])
    assert scores.shape == (4,) and np.all((scores >= 0) & (scores <= 1))
    expert.save(tmp_path / "weights")
    reloaded = create_expert(card).load(tmp_path / "weights")
    np.testing.assert_allclose(reloaded.predict_proba(reals[:2] + fakes[:2]), scores, rtol=1e-6)
    assert reloaded.identity == expert.identity


def test_the_seed_experts_are_all_there():
    assert {"fakevlm", "legion", "univfd", "npr"} <= {path.stem for path in PRETRAINED}


def test_experts_list_shows_every_card_and_where_its_weights_are(tmp_path):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"),
                   "COE_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [sys.executable, "-m", "coe", "experts", "list"], capture_output=True, text=True, env=environment, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for card in CARDS:
        assert card.stem in result.stdout
    assert "untrained: coe experts train dct" in result.stdout
    assert "missing: expert 'fakevlm': lingcco/fakeVLM is not in the hub cache" in result.stdout
    assert "https://github.com/chuangchuangtan/NPR-DeepfakeDetection/blob/main/NPR.pth" in result.stdout
