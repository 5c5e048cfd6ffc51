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
    from coe.defaults import build_default_models

    home = tmp_path_factory.mktemp("coe-home")
    build_default_models(tiny_config(home, tiny_clip), benchmark=SMALL_BENCHMARK)
    return home


@pytest.fixture
def trained_config(trained_home, tiny_clip) -> CoeConfig:
    return tiny_config(trained_home, tiny_clip)


SENTENCE_WORDS = "the a hand has six fingers blurry text on sign sky is too smooth face looks real fake image".split()


@pytest.fixture(scope="session")
def tiny_sentence_model(tmp_path_factory) -> Path:
    """A sentence model for CSS: a 2-layer BERT with random weights, a word-level tokenizer over
    SENTENCE_WORDS, mean pooling; saved with SentenceTransformer.save like any sentence model folder."""
    ensure_torchvision_importable()
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, BertTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocabulary = {token: index for index, token in enumerate([*special, *SENTENCE_WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocabulary["[CLS]"]), ("[SEP]", vocabulary["[SEP]"])],
    )
    fast_tokenizer = BertTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=32,
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocabulary),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    root = tmp_path_factory.mktemp("sentence_model")
    BertModel(config).save_pretrained(root / "bert")
    fast_tokenizer.save_pretrained(root / "bert")
    transformer = Transformer(str(root / "bert"))
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    model = SentenceTransformer(modules=[transformer, pooling], device="cpu")
    model.save(str(root / "sentence"))
    return root / "sentence"
