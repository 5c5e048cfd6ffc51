"""Configuration: defaults, files, --set overrides, and errors that name the key and the file."""

from __future__ import annotations

import re

import pytest

from coe.config import SHIPPED_CARDS, ConfigError, load_config, load_expert_cards, parse_override


def test_defaults_load_and_every_default_expert_has_a_valid_card():
    config = load_config()
    cards = load_expert_cards(config)
    assert list(cards) == config.experts == ["spectrum", "dct", "residual"]
    assert {card.family for card in cards.values()} == {"spectrum", "dct", "residual"}
    assert config.features.backbone == "ViT-B-32"


def test_a_user_file_and_set_options_override_in_order(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("features:\n  batch_size: 8\nmerger:\n  uncertain_low: 0.2\n")
    config = load_config(user, ["features.batch_size=4", "router.model=lightgbm"])
    assert config.features.batch_size == 4
    assert config.merger.uncertain_low == 0.2 and config.merger.uncertain_high == 0.65
    assert config.router.model == "lightgbm"


def test_coe_home_environment_variable_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("COE_HOME", str(tmp_path / "home"))
    assert load_config(overrides=["home=/somewhere/else"]).home == tmp_path / "home"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("featurs:\n  backbone: RN50\n", "featurs: unknown key"),
        ("features:\n  batch_sise: 3\n", "features.batch_sise: unknown key"),
        ("features:\n  batch_size: zero\n", "features.batch_size: Input should be a valid integer"),
        ("router:\n  model: forest\n", "router.model: Input should be 'logreg' or 'lightgbm'"),
        ("- a\n- list\n", "expected a mapping"),
        ("features: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_files_are_refused_with_the_key_and_the_file(tmp_path, text, expected):
    user = tmp_path / "bad.yaml"
    user.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(user)
    assert str(user) in str(error.value) and expected in str(error.value)


def test_bad_set_option_names_itself():
    with pytest.raises(ConfigError, match=r"--set merger.uncertain_high=2: merger.uncertain_high: Input should be"):
        load_config(overrides=["merger.uncertain_high=2"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("features.batch_size")


def test_expert_cards_are_validated_with_the_card_file_named(tmp_path):
    (tmp_path / "broken.yaml").write_text("name: broken\nfamily: dct\ncost: -1\nthreshhold: 0.5\n")
    config = load_config(overrides=[f"experts_dir={tmp_path}", "experts=[broken]", "features.descriptors=[]"])
    with pytest.raises(ConfigError) as error:
        load_expert_cards(config)
    message = str(error.value)
    assert f"{tmp_path / 'broken.yaml'}: threshhold: unknown key" in message
    assert f"{tmp_path / 'broken.yaml'}: cost: Input should be greater than or equal to 0" in message
    config = load_config(overrides=[f"experts_dir={tmp_path}", "experts=[absent]", "features.descriptors=[]"])
    with pytest.raises(ConfigError, match="no card absent.yaml is in .* available cards: \\[.*'broken', 'dct'"):
        load_expert_cards(config)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty.yaml: empty file: expected a mapping of keys (ExpertCard)"),
        ("name: empty\nfamily: [dct\n", "empty.yaml line 3: not valid YAML: expected ',' or ']'"),
    ],
)
def test_an_empty_or_broken_card_is_refused_with_its_file_and_line(tmp_path, text, expected):
    (tmp_path / "empty.yaml").write_text(text)
    config = load_config(overrides=[f"experts_dir={tmp_path}", "experts=[empty]", "features.descriptors=[]"])
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_expert_cards(config)


def test_an_empty_configuration_file_sets_nothing(tmp_path):
    (tmp_path / "coe.yaml").write_text("# nothing changed yet\n")
    assert load_config(tmp_path / "coe.yaml") == load_config()


def test_a_users_card_wins_over_the_shipped_one_and_the_others_stay_available(tmp_path):
    mine = tmp_path / "cards"
    mine.mkdir()
    (mine / "dct.yaml").write_text("name: dct\nfamily: dct\nversion: mine\ncost: 3\n")
    (tmp_path / "coe.yaml").write_text("experts_dir: cards\n")  # relative to this file, not to the working folder
    config = load_config(tmp_path / "coe.yaml")
    assert config.experts_dir == mine
    cards = load_expert_cards(config)
    assert cards["dct"].version == "mine"
    assert cards["spectrum"] == load_expert_cards(load_config())["spectrum"]
    assert config.card_files()["dct"] == mine / "dct.yaml"
    assert config.card_files()["legion"].parent == SHIPPED_CARDS
