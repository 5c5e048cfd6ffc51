"""Shared fixtures: a tiny CLIP saved the way users keep local weights, and a small trained home
(built-in benchmark -> experts -> router) built once per test session through the real code path."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.autoencoder import AutoencoderConfig
from benchmarks.builtin import BuiltinBenchmarkConfig
from coe.config import CoeConfig, load_config
from coe.core.torchvision_compat import ensure_torchvision_importable
from tests.support.random_checkpoints import TINY_CLIP_CONFIG, write_open_clip  # noqa: F401 (read here by tests)

pytest_plugins = ["browser"]  # the `chromium` and `page` fixtures of tests/browser.py

# The default's autoencoder fakes (briefly trained) and inpainted ones, whose masks localisation is scored on.
SMALL_BENCHMARK = BuiltinBenchmarkConfig(
    n_real=60, fakes_per_generator=20, generators=["autoencoder", "inpaint_local"],
    autoencoder=AutoencoderConfig(steps=150),
)


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """An open_clip model from a tiny config with random weights, saved as a `local-dir:` folder."""
    return write_open_clip(folder, "tiny", seed)


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
