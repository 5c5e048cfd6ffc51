"""The UnivFD expert: a tiny open_clip CLIP (a local-dir: folder) and a probe saved as
UniversalFakeDetect saves fc_weights.pth (tests/support/random_checkpoints.py), loaded through the card,
and checked against upstream's own transform (torchvision CenterCrop -> ToTensor -> Normalize) on
real image files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

import experts.univfd  # noqa: F401  (registers the family)
from coe.core.torchvision_compat import ensure_torchvision_importable
from coe.core.yaml_files import load_yaml_model
from experts.base import ExpertCard, create_expert
from experts.sizing import card_figures
from coe.core.open_clip_hub import cached_open_clip_checkpoint
from experts.univfd import UnivFDExpert, UnivFDParams, centre_crop
from experts.weights import WeightsNotFoundError
from tests.support.random_checkpoints import TINY_CLIP_CONFIG, RandomCheckpoint, write_random_checkpoint
from photos import read_rgb, write_photos

CARD_FILE = Path(__file__).resolve().parents[1] / "configs" / "experts" / "univfd.yaml"
TINY_EMBED_DIM = TINY_CLIP_CONFIG["model_cfg"]["embed_dim"]
TINY_IMAGE_SIZE = TINY_CLIP_CONFIG["model_cfg"]["vision_cfg"]["image_size"]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> RandomCheckpoint:
    return write_random_checkpoint("univfd", tmp_path_factory.mktemp("univfd"), "tiny")


def clip_folder(checkpoint: RandomCheckpoint) -> Path:
    return Path(checkpoint.params["clip_weights"].removeprefix("local-dir:"))


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[Path]:
    """JPEG and PNG photographs larger than the 64-pixel crop, smaller on one side, smaller on both,
    and with odd margins (where the crop offset rounds)."""
    return write_photos(
        tmp_path_factory.mktemp("images"),
        [
            ("astronaut.jpg", data.astronaut(), (128, 128)),
            ("chelsea.png", data.chelsea(), (97, 65)),  # odd margins: 33 and 1
            ("coffee.jpg", data.coffee(), (90, 40)),  # shorter than the crop in height only
            ("rocket.png", data.rocket(), (45, 31)),  # shorter in both: padded with black
            ("camera.png", np.stack([data.camera()] * 3, axis=-1), (64, 64)),
        ],
    )


def upstream_p_fake(image_files: list[Path], clip_folder: Path, probe_path: Path) -> np.ndarray:
    """UniversalFakeDetect's validation path: its torchvision transform on the PIL image, the CLIP
    image embedding (QuickGELU, as OpenAI's CLIP), the linear probe, a sigmoid."""
    ensure_torchvision_importable()
    import open_clip
    from torchvision import transforms

    config = json.loads((clip_folder / "open_clip_config.json").read_text())["model_cfg"]
    clip = open_clip.model.CLIP(**config, quick_gelu=True)
    clip.load_state_dict(torch.load(clip_folder / "open_clip_pytorch_model.bin", weights_only=True))
    clip.eval()
    probe = torch.load(probe_path, weights_only=True)
    transform = transforms.Compose(
        [
            transforms.CenterCrop(TINY_IMAGE_SIZE),
            transforms.ToTensor(),
            transforms.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )
    with torch.no_grad():
        batch = torch.stack([transform(Image.open(path).convert("RGB")) for path in image_files])
        logits = clip.encode_image(batch) @ probe["weight"].T + probe["bias"]
    return torch.sigmoid(logits).squeeze(1).numpy()


def univfd_card(checkpoint_params: dict, **params) -> ExpertCard:
    params = {**checkpoint_params, "device": "cpu", "batch_size": 2, **params}
    return ExpertCard(name="univfd", family="univfd", params=params)


def test_p_fake_equals_the_upstream_computation(checkpoint, image_files):
    expert = create_expert(univfd_card(checkpoint.params)).load(checkpoint.weights)
    probabilities = expert.predict_proba([read_rgb(path) for path in image_files])

    assert expert.crop_size == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    assert probabilities.shape == (len(image_files),)
    assert checkpoint.weights.name == "fc_weights.pth"
    expected = upstream_p_fake(image_files, clip_folder(checkpoint), checkpoint.weights)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-6)
    assert np.ptp(probabilities) > 1e-2  # the images are told apart, not all mapped to one value
    assert expert.identity.startswith("1:") and "unloaded" not in expert.identity


def test_small_images_are_padded_with_black_as_torchvision_does():
    ensure_torchvision_importable()
    from torchvision import transforms

    rng = np.random.default_rng(0)
    for height, width in [(45, 31), (90, 40), (97, 65), (64, 64), (63, 66)]:
        image = rng.integers(1, 256, size=(height, width, 3), dtype=np.uint8)
        expected = np.asarray(transforms.CenterCrop(TINY_IMAGE_SIZE)(Image.fromarray(image)))
        np.testing.assert_array_equal(centre_crop(image, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), expected)


def test_probe_digest_changes_identity(checkpoint, tmp_path):
    other = write_random_checkpoint("univfd", tmp_path / "other", "tiny", seed=2)
    first = create_expert(univfd_card(checkpoint.params)).load(checkpoint.weights)
    # the other probe with the first CLIP, given as the folder holding fc_weights.pth
    second = create_expert(univfd_card(checkpoint.params)).load(other.weights.parent)
    assert first.identity != second.identity


@pytest.mark.parametrize(
    ("state", "named"),
    [
        ({"weight": torch.zeros(1, TINY_EMBED_DIM)}, r"Missing key.*bias"),
        (
            {"weight": torch.zeros(1, TINY_EMBED_DIM), "bias": torch.zeros(1), "scale": torch.ones(1)},
            r"Unexpected key.*scale",
        ),
        ({"weight": torch.zeros(1, 16), "bias": torch.zeros(1)}, r"size mismatch for weight"),
    ],
    ids=["missing", "unexpected", "wrong-shape"],
)
def test_probe_loads_strictly(checkpoint, tmp_path, state, named):
    path = tmp_path / "fc_weights.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=named):
        create_expert(univfd_card(checkpoint.params)).load(path)


def test_missing_probe_says_where_to_get_it(checkpoint, tmp_path):
    where = r"UniversalFakeDetect.*pretrained_weights/fc_weights\.pth"
    with pytest.raises(WeightsNotFoundError, match=where):
        create_expert(univfd_card(checkpoint.params)).load(tmp_path / "experts" / "univfd" / "fc_weights.pth")


def test_missing_clip_says_where_to_get_it(tmp_path, checkpoint, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    card = ExpertCard(name="univfd", family="univfd", params={"device": "cpu"})
    where = r"HF_HUB_OFFLINE.*timm/vit_large_patch14_clip_224\.openai.*ViT-L-14\.pt"
    with pytest.raises(WeightsNotFoundError, match=where):
        create_expert(card).load(checkpoint.weights)
    card = univfd_card({"clip_weights": f"local-dir:{tmp_path / 'nothing-here'}"})
    with pytest.raises(WeightsNotFoundError, match="open_clip_config.json"):
        create_expert(card).load(checkpoint.weights)


def test_hub_cache_lookup_prefers_open_clips_safetensors_name(tmp_path, monkeypatch):
    ensure_torchvision_importable()
    from huggingface_hub import constants

    snapshot = tmp_path / "models--timm--vit_large_patch14_clip_224.openai" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (tmp_path / "models--timm--vit_large_patch14_clip_224.openai" / "refs").mkdir()
    (tmp_path / "models--timm--vit_large_patch14_clip_224.openai" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    tag = {"hf_hub": "timm/vit_large_patch14_clip_224.openai/"}
    assert cached_open_clip_checkpoint(tag) is None
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"bin")
    assert cached_open_clip_checkpoint(tag) == snapshot / "open_clip_pytorch_model.bin"
    (snapshot / "open_clip_model.safetensors").write_bytes(b"safetensors")
    assert cached_open_clip_checkpoint(tag) == snapshot / "open_clip_model.safetensors"


def test_card_figures_come_from_the_full_size_model():
    card = load_yaml_model(CARD_FILE, ExpertCard)
    params = UnivFDParams.model_validate(card.params)
    footprint = UnivFDExpert.full_size_footprint(params)
    # CLIP ViT-L/14's image tower (about 304M parameters) and Linear(768, 1).
    assert 300e6 < footprint.parameters < 310e6 and footprint.dtype == "float32"
    figures = card_figures(footprint)
    assert (card.cost, card.resources) == (figures.cost, figures.resources)
    assert create_expert(card).params == params
