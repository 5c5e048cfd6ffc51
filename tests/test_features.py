"""CLIP features through open_clip: where weights come from, random-weight marking, the cache."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TINY_CLIP_CONFIG, save_tiny_clip
from router.features import ClipFeatureExtractor, ClipSpec, FeatureCache, embed_with_cache


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (48 + 8 * i, 64, 3), dtype=np.uint8) for i in range(n)]


def test_local_dir_weights_load_through_open_clip_and_are_not_marked_random(tiny_clip):
    extractor = ClipFeatureExtractor(ClipSpec(weights=f"local-dir:{tiny_clip}", batch_size=2))
    features = extractor.embed(images(5))
    assert features.shape == (5, TINY_CLIP_CONFIG["model_cfg"]["embed_dim"]) and extractor.dim == 32
    assert np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    assert not extractor.random_weights and extractor.extractor_id.startswith("open_clip/local/local-")


def test_weights_from_another_folder_give_other_features_and_another_id(tmp_path, tiny_clip):
    other = save_tiny_clip(tmp_path / "other", seed=1)
    first = ClipFeatureExtractor(ClipSpec(weights=f"local-dir:{tiny_clip}"))
    second = ClipFeatureExtractor(ClipSpec(weights=f"local-dir:{other}"))
    assert first.extractor_id != second.extractor_id
    assert not np.allclose(first.embed(images(2)), second.embed(images(2)))


def test_a_weights_file_loads_into_a_named_backbone(tmp_path):
    import torch

    random_model = ClipFeatureExtractor(ClipSpec(backbone="ViT-S-32", weights="none"))
    model, _ = random_model._model_and_preprocess
    weights = tmp_path / "clip.bin"
    torch.save(model.state_dict(), weights)
    loaded = ClipFeatureExtractor(ClipSpec(backbone="ViT-S-32", weights=str(weights)))
    assert not loaded.random_weights and loaded.extractor_id.startswith("open_clip/ViT-S-32/file-")
    assert np.allclose(loaded.embed(images(2)), random_model.embed(images(2)), atol=1e-5)


def test_random_weights_are_marked_and_reproducible():
    first = ClipFeatureExtractor(ClipSpec(backbone="ViT-S-32", weights="none", seed=3))
    second = ClipFeatureExtractor(ClipSpec(backbone="ViT-S-32", weights="none", seed=3))
    assert first.random_weights and first.extractor_id == "open_clip/ViT-S-32/random-seed3"
    assert np.array_equal(first.embed(images(2)), second.embed(images(2)))


def test_auto_without_a_hub_cache_falls_back_to_marked_random_weights(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setattr("router.features._warned", set())
    extractor = ClipFeatureExtractor(ClipSpec(backbone="ViT-S-32", weights="auto"))
    assert extractor.random_weights and extractor.extractor_id.endswith("random-seed0")
    # Said once per process, however many extractors a command builds (routing, then training...),
    # and open_clip's own notice of random weights is not said again after it.
    ClipFeatureExtractor(ClipSpec(backbone="ViT-S-32", weights="auto")).embed(images(1))
    assert caplog.text.count("RANDOM weights") == 1
    assert "No pretrained weights loaded" not in caplog.text


def test_missing_local_weights_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ClipFeatureExtractor(ClipSpec(weights=f"local-dir:{tmp_path / 'nope'}"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ClipFeatureExtractor(ClipSpec(weights=str(tmp_path / "nope.safetensors")))


def test_cache_means_a_second_pass_embeds_nothing(tmp_path, tiny_clip):
    extractor = ClipFeatureExtractor(ClipSpec(weights=f"local-dir:{tiny_clip}"))
    cache = FeatureCache(tmp_path / "features.sqlite")
    batch = images(4)
    ids = [f"id{i}" for i in range(4)]
    first, embedded_first = embed_with_cache(extractor, cache, ids[:2], batch[:2])
    both, embedded_both = embed_with_cache(extractor, cache, ids, batch)
    again, embedded_again = embed_with_cache(extractor, cache, ids, batch)
    assert (embedded_first, embedded_both, embedded_again) == (2, 2, 0)
    assert np.allclose(both[:2], first) and np.array_equal(both, again)
    cache.close()
    reopened = FeatureCache(tmp_path / "features.sqlite")
    assert set(reopened.get(extractor.extractor_id, ids)) == set(ids)
    assert reopened.get("open_clip/other/extractor", ids) == {}


def test_routing_features_append_forensic_descriptors_and_name_them(tiny_clip):
    from coe.config import load_config, load_expert_cards
    from coe.models import routing_features

    config = load_config(overrides=[f"features.weights=local-dir:{tiny_clip}", "features.descriptors=[spectrum]"])
    features = routing_features(config, load_expert_cards(config))
    batch = [image for image in images(3) if min(image.shape[:2]) >= 32]
    vectors = features.embed(batch)
    spectrum_bins = load_expert_cards(config)["spectrum"].params.get("n_bins", 48)
    assert vectors.shape == (len(batch), 32 + spectrum_bins)
    assert features.extractor_id.startswith(features.clip.extractor_id + "+spectrum@1:")
    only_clip = routing_features(config.model_copy(update={"features": config.features.model_copy(
        update={"descriptors": []})}), load_expert_cards(config))
    assert only_clip.extractor_id == features.clip.extractor_id
    assert np.allclose(vectors[:, :32], only_clip.embed(batch))


def test_descriptors_must_name_enabled_experts():
    from coe.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="features.descriptors names experts that are not enabled: \\['dct'\\]"):
        load_config(overrides=["experts=[spectrum]", "features.descriptors=[dct]"])
