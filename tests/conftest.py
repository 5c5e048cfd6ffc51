"""Shared fixtures: a tiny CLIP saved the way users keep local weights, and a small trained home
(built-in benchmark -> experts -> router) built once per test session through the real code path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.builtin import BuiltinBenchmarkConfig
from coe.config import CoeConfig, load_config
from coe.core.torchvision_compat import ensure_torchvision_importable

TINY_CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1},
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
    },
}
SMALL_BENCHMARK = BuiltinBenchmarkConfig(n_real=60, fakes_per_generator=20)


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """An open_clip model from a tiny config with random weights, saved as a `local-dir:` folder."""
    ensure_torchvision_importable()
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**TINY_CLIP_CONFIG["model_cfg"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def tiny_config(home: Path, tiny_clip: Path, *overrides: str) -> CoeConfig:
    return load_config(overrides=[f"home={home}", f"features.weights=local-dir:{tiny_clip}", *overrides])


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory, tiny_clip) -> Path:
    """A COE home with the default experts and router trained on a small built-in benchmark."""
    from coe.models import build_default_models

    home = tmp_path_factory.mktemp("coe-home")
    build_default_models(tiny_config(home, tiny_clip), benchmark=SMALL_BENCHMARK)
    return home


@pytest.fixture
def trained_config(trained_home, tiny_clip) -> CoeConfig:
    return tiny_config(trained_home, tiny_clip)
