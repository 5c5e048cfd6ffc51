"""The NPR expert: upstream's network with random weights, saved the way NPR-DeepfakeDetection saves
NPR.pth (tests/support/random_checkpoints.py), loaded through the card, and checked against the residual
computed here with numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

import experts.npr  # noqa: F401  (registers the family)
from coe.core.yaml_files import load_yaml_model
from experts.base import ExpertCard, create_expert
from experts.npr import NPRExpert, NPRNetwork, NPRParams, even_centre_crop
from experts.sizing import card_figures
from experts.weights import WeightsNotFoundError
from tests.support.random_checkpoints import write_random_checkpoint
from photos import read_rgb, write_photos

CARD_FILE = Path(__file__).resolve().parents[1] / "configs" / "experts" / "npr.yaml"
# Upstream's resnet50(num_classes=1) from networks/resnet.py: trainable parameters, and every
# element of its state dict (BatchNorm running statistics and counters included), which is what
# the published NPR.pth holds.
UPSTREAM_PARAMETERS = 1_437_761
UPSTREAM_STATE_ELEMENTS = 1_447_897


@pytest.fixture(scope="module")
def published_checkpoint(tmp_path_factory) -> Path:
    return write_random_checkpoint("npr", tmp_path_factory.mktemp("npr"), "tiny").weights


@pytest.fixture(scope="module")
def network_state(published_checkpoint) -> dict[str, torch.Tensor]:
    """The network's weights, read out of the published layout: the state dict of a DataParallel
    model under "model", next to the optimiser's state and the step count."""
    saved = torch.load(published_checkpoint, weights_only=True)
    assert published_checkpoint.name == "NPR.pth" and set(saved) == {"model", "optimizer", "total_steps"}
    assert all(key.startswith("module.") for key in saved["model"])
    return {key.removeprefix("module."): tensor for key, tensor in saved["model"].items()}


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[Path]:
    """Real photographs as JPEG and PNG, with odd and even sides, some sharing a size."""
    return write_photos(
        tmp_path_factory.mktemp("images"),
        [
            ("astronaut.png", data.astronaut(), (256, 256)),
            ("chelsea.jpg", data.chelsea(), None),  # 300x451: odd width
            ("coffee.png", data.coffee(), (201, 151)),  # odd both ways
            ("rocket.jpg", data.rocket(), (256, 256)),  # same size as the astronaut: one batch
            ("tiny.png", data.astronaut(), (7, 5)),
        ],
    )


def expected_p_fake(image: np.ndarray, network: NPRNetwork) -> float:
    """Upstream's test path written out: drop the last row/column of an odd side, ToTensor,
    ImageNet normalisation, the NPR residual (each pixel minus its 2x2 block's top-left pixel), x 2/3,
    then the network's layers in upstream's order."""
    height, width = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    x = image[:height, :width].astype(np.float64) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    anchors = np.repeat(np.repeat(x[::2, ::2], 2, axis=0), 2, axis=1)
    residual = torch.from_numpy(((x - anchors) * 2.0 / 3.0).astype(np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        h = network.maxpool(network.relu(network.bn1(network.conv1(residual))))
        h = network.avgpool(network.layer2(network.layer1(h))).flatten(1)
        return float(torch.sigmoid(network.fc1(h)))


def npr_card(**params) -> ExpertCard:
    return ExpertCard(name="npr", family="npr", params={"device": "cpu", "batch_size": 2, **params})


def test_network_is_upstream_size(network_state):
    network = NPRNetwork()
    assert sum(parameter.numel() for parameter in network.parameters()) == UPSTREAM_PARAMETERS
    assert sum(tensor.numel() for tensor in network_state.values()) == UPSTREAM_STATE_ELEMENTS
    assert {"conv1.weight", "layer2.0.downsample.0.weight", "layer2.3.bn3.running_var"} <= set(network_state)
    assert not any(key.startswith(("layer3", "layer4", "fc.")) for key in network_state)
    assert network.conv1.kernel_size == (3, 3) and network.conv1.stride == (2, 2)


def test_p_fake_equals_the_upstream_computation(published_checkpoint, image_files, network_state):
    expert = create_expert(npr_card()).load(published_checkpoint)
    images = [read_rgb(path) for path in image_files]
    probabilities = expert.predict_proba(images)

    reference = NPRNetwork()
    reference.load_state_dict(network_state)
    reference.eval()
    expected = [expected_p_fake(image, reference) for image in images]
    assert probabilities.shape == (len(images),)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-6)
    assert np.ptp(probabilities) > 1e-3  # the images are told apart, not all mapped to one value

    outputs = expert.predict(images[:2])
    assert [output.p_fake for output in outputs] == pytest.approx(list(probabilities[:2]))
    assert expert.identity.startswith("1:") and "unloaded" not in expert.identity


def test_bare_state_dict_loads_to_the_same_scores(tmp_path, published_checkpoint, image_files, network_state):
    """Upstream's trainer saves, and its test.py loads, the bare state dict."""
    bare = tmp_path / "model_epoch_best.pth"
    torch.save(network_state, bare)
    images = [read_rgb(path) for path in image_files[:3]]
    from_published = create_expert(npr_card()).load(published_checkpoint).predict_proba(images)
    from_bare = create_expert(npr_card()).load(bare).predict_proba(images)
    from_folder = create_expert(npr_card()).load(published_checkpoint.parent).predict_proba(images)
    np.testing.assert_array_equal(from_published, from_bare)
    np.testing.assert_array_equal(from_published, from_folder)


def test_missing_key_is_an_error_that_names_it(tmp_path, network_state):
    path = tmp_path / "NPR.pth"
    torch.save({"model": {key: value for key, value in network_state.items() if key != "fc1.bias"}}, path)
    with pytest.raises(ValueError, match=r"Missing key.*fc1\.bias"):
        create_expert(npr_card()).load(path)


def test_unexpected_key_is_an_error_that_names_it(tmp_path, network_state):
    path = tmp_path / "NPR.pth"
    torch.save({**network_state, "fc.weight": torch.zeros(1, 2048)}, path)
    with pytest.raises(ValueError, match=r"Unexpected key.*fc\.weight"):
        create_expert(npr_card()).load(path)


def test_missing_checkpoint_says_where_to_get_it(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"NPR-DeepfakeDetection.*NPR\.pth.*" + str(tmp_path)):
        create_expert(npr_card()).load(tmp_path / "experts" / "npr" / "NPR.pth")


def test_large_images_are_cropped_at_even_offsets_never_resized():
    image = np.arange(101 * 131 * 3, dtype=np.uint32).reshape(101, 131, 3).astype(np.uint8)
    crop = even_centre_crop(image, max_side=64)
    assert crop.shape == (64, 64, 3)
    top, left = 18, 32  # (101 - 64) // 2 = 18 and (131 - 64) // 2 = 33, moved down to even
    np.testing.assert_array_equal(crop, image[top : top + 64, left : left + 64])
    np.testing.assert_array_equal(even_centre_crop(image, max_side=None), image[:100, :130])
    with pytest.raises(ValueError, match="2x2"):
        even_centre_crop(image[:1], max_side=None)


def test_card_figures_come_from_the_full_size_network():
    card = load_yaml_model(CARD_FILE, ExpertCard)
    footprint = NPRExpert.full_size_footprint(NPRParams.model_validate(card.params))
    assert footprint.parameters == UPSTREAM_PARAMETERS
    figures = card_figures(footprint)
    assert (card.cost, card.resources) == (figures.cost, figures.resources)
    assert create_expert(card).params == NPRParams.model_validate(card.params)
