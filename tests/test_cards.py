"""Every expert card, parametrised over the cards in configs/experts (as timm tests its registry):
it validates, names a registered family, and a pretrained expert's cost and resources are the
figures derived from its full-size architecture (experts.sizing), so the card cannot drift."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

import experts  # noqa: F401  (registers the built-in families)
from coe.config import CONFIG_DIR
from coe.core.yaml_files import load_yaml_model
from experts.base import ExpertCard, PretrainedExpert, expert_families
from experts.sizing import card_figures

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
