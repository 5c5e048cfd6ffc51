"""The frequency/noise experts: built from their cards, trained, saved and loaded back, and
complementary on the built-in benchmark, which is what makes routing between them worth it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from skimage import data

from benchmarks.builtin import BuiltinBenchmarkConfig, build_builtin_benchmark, read_builtin_manifest
from benchmarks.scripts.complementarity import (
    CARDS_DIR,
    EXPERTS,
    ORACLE,
    OVERALL,
    evaluate_complementarity,
    fake_labels,
    load_card,
    load_images,
)
from benchmarks.simulators import SIMULATORS
from experts.base import ExpertCard, ExpertNotTrainedError, create_expert, expert_families
from experts.classic import META_FILE, training_data_hash

# Small enough to build and train in seconds, large enough for the complementarity to be measured.
# The simulators: each imprints the trace one expert is built for.
SMALL = BuiltinBenchmarkConfig(seed=0, n_real=240, fakes_per_generator=80, generators=list(SIMULATORS))


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory) -> Path:
    return build_builtin_benchmark(tmp_path_factory.mktemp("builtin") / "bench", SMALL)


@pytest.fixture(scope="module")
def training_set(benchmark) -> tuple[list[np.ndarray], np.ndarray]:
    rows = read_builtin_manifest(benchmark.parent, "expert_train")
    return load_images(benchmark.parent, rows), fake_labels(rows)


@pytest.fixture(scope="module")
def test_images(benchmark) -> list[np.ndarray]:
    return load_images(benchmark.parent, read_builtin_manifest(benchmark.parent, "test"))


@pytest.fixture(scope="module")
def trained(training_set) -> dict[str, object]:
    images, labels = training_set
    return {name: create_expert(load_card(name)).fit(images, labels) for name in EXPERTS}


@pytest.mark.parametrize("name", EXPERTS)
def test_card_builds_its_registered_family(name):
    card_data = yaml.safe_load((CARDS_DIR / f"{name}.yaml").read_text())
    card = ExpertCard.model_validate(card_data)
    assert card.family == name and card.capabilities == ["detect"]
    assert card.resources.num_gpus == 0 and card.weights == f"experts/{name}"
    assert type(create_expert(card)) is expert_families()[name]


@pytest.mark.parametrize("name", EXPERTS)
def test_card_rejects_unknown_params(name):
    card = load_card(name).model_copy(update={"params": {"no_such_param": 1}})
    with pytest.raises(ValueError):
        create_expert(card)


@pytest.mark.parametrize("name", EXPERTS)
def test_descriptor_has_a_fixed_length_whatever_the_image_size(name):
    expert = create_expert(load_card(name))
    photo = data.coffee()
    lengths = {
        expert.describe(image).shape
        for image in (photo[:256, :256], photo[:203, :317], photo, np.tile(photo, (3, 2, 1)))
    }
    assert len(lengths) == 1
    assert np.isfinite(expert.describe(photo)).all()


@pytest.mark.parametrize("name", EXPERTS)
def test_small_and_flat_images_give_finite_descriptors(name):
    # The smallest image the decoder lets through (32 px), flat or not: some spectrum rings are empty.
    expert = create_expert(load_card(name))
    for image in (np.full((32, 48, 3), 128, np.uint8), data.coffee()[:32, :32], np.zeros((64, 96, 3), np.uint8)):
        assert np.isfinite(expert.describe(image)).all()


@pytest.mark.parametrize("name", EXPERTS)
def test_predicting_untrained_raises(name, tmp_path):
    expert = create_expert(load_card(name))
    with pytest.raises(ExpertNotTrainedError):
        expert.predict_proba([data.astronaut()])
    with pytest.raises(ExpertNotTrainedError):
        expert.load(tmp_path)


@pytest.mark.parametrize("name", EXPERTS)
def test_probabilities_are_in_unit_interval(name, trained, test_images):
    probabilities = trained[name].predict_proba(test_images)
    assert probabilities.shape == (len(test_images),)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()


@pytest.mark.parametrize("name", EXPERTS)
def test_save_then_load_gives_identical_probabilities(name, trained, test_images, tmp_path):
    folder = tmp_path / "weights" / name
    trained[name].save(folder)
    reloaded = create_expert(load_card(name)).load(folder)
    assert np.array_equal(reloaded.predict_proba(test_images), trained[name].predict_proba(test_images))


@pytest.mark.parametrize("name", EXPERTS)
def test_meta_records_what_the_expert_was_trained_on(name, trained, training_set, tmp_path):
    trained[name].save(tmp_path)
    meta = json.loads((tmp_path / META_FILE).read_text())
    images, labels = training_set
    assert meta["training_data_hash"] == training_data_hash(images, labels)
    assert meta["version"] == load_card(name).version
    assert meta["family"] == name
    assert meta["n_train"] == {"real": int((labels == 0).sum()), "fake": int((labels == 1).sum())}
    assert 0.5 < meta["metrics"]["holdout_auc"] <= 1.0


def test_training_data_hash_changes_with_the_data(training_set):
    images, labels = training_set
    first = create_expert(load_card("dct")).fit(images, labels).meta["training_data_hash"]
    fewer = create_expert(load_card("dct")).fit(images[1:], labels[1:]).meta["training_data_hash"]
    assert first != fewer


def test_experts_complement_each_other(benchmark):
    report = evaluate_complementarity(benchmark)
    # Every expert is the best on some generator, so no single one is best everywhere.
    best = {generator: report.best_expert(generator) for generator in SMALL.generators}
    assert set(best.values()) == set(EXPERTS), report.table()
    for generator, winner in best.items():
        runners_up = [report.accuracy[name][generator] for name in EXPERTS if name != winner]
        assert report.accuracy[winner][generator] > max(runners_up), report.table()
    # The per-image oracle clearly beats the best single expert.
    best_single = max(report.accuracy[name][OVERALL] for name in EXPERTS)
    assert report.accuracy[ORACLE][OVERALL] >= 0.95, report.table()
    assert report.accuracy[ORACLE][OVERALL] >= best_single + 0.08, report.table()
    # False positives stay reasonable for every expert.
    assert all(report.accuracy[name]["real"] >= 0.7 for name in EXPERTS), report.table()
