"""Perturbations: names round-trip, bad ones are refused, each does what it says to the pixels,
and masks stay aligned with the images they belong to."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import laplace

from benchmarks.perturbations import MIN_SHORT_SIDE, Perturbation, parse_perturbations


def photo_like(height: int = 96, width: int = 128, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus fine noise: JPEG and blur both have something to remove."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:height, 0:width]
    diagonal = (rows + columns) * 127 / (height + width)
    base = np.stack([rows * 255 / height, columns * 255 / width, diagonal], axis=-1)
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


def square_image(height: int, width: int, top: int, left: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """A black image with a white square, and the square's mask."""
    mask = np.zeros((height, width), bool)
    mask[top : top + side, left : left + side] = True
    return np.where(mask[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2), mask


@pytest.mark.parametrize("name", ["none", "jpeg:75", "blur:1.5", "resize:0.5", "resize:2", "crop:0.8"])
def test_names_round_trip(name):
    assert Perturbation.parse(name).name == name


def test_parse_gives_canonical_names_and_values():
    assert Perturbation.parse("jpeg:75.0") == Perturbation(kind="jpeg", value=75)
    assert Perturbation.parse(" resize:2.0 ").name == "resize:2"
    assert Perturbation.parse("none").value is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sharpen:2", "unknown perturbation"),
        ("jpeg", "needs a number"),
        ("jpeg:high", "needs a number"),
        ("jpeg:0", "integer from 1 to 100"),
        ("jpeg:101", "integer from 1 to 100"),
        ("jpeg:75.5", "integer from 1 to 100"),
        ("blur:0", "sigma must be > 0"),
        ("resize:0", r"scale must be in \(0, 4\]"),
        ("resize:5", r"scale must be in \(0, 4\]"),
        ("crop:1.2", r"fraction must be in \(0, 1\]"),
        ("none:3", "takes no value"),
        ("blur:nan", "finite"),
    ],
)
def test_bad_perturbations_are_refused_clearly(text, message):
    with pytest.raises(ValueError, match=message):
        Perturbation.parse(text)


def test_parse_perturbations_keeps_order_and_refuses_duplicates():
    parsed = parse_perturbations(["none", "jpeg:90", "blur:1"])
    assert [perturbation.name for perturbation in parsed] == ["none", "jpeg:90", "blur:1"]
    with pytest.raises(ValueError, match="more than once: jpeg:75"):
        parse_perturbations(["jpeg:75", "blur:1", "jpeg:75.0"])


def test_perturbations_are_frozen():
    with pytest.raises(ValueError):
        Perturbation(kind="jpeg", value=75).value = 10  # type: ignore[misc]


def test_jpeg_changes_pixels_keeps_shape_and_low_quality_loses_more():
    pixels = photo_like()
    errors = {}
    for quality in (100, 10):
        perturbed = Perturbation.parse(f"jpeg:{quality}").apply(pixels)
        assert perturbed.shape == pixels.shape and perturbed.dtype == np.uint8
        errors[quality] = np.abs(perturbed.astype(float) - pixels).mean()
    assert 0 < errors[100] < errors[10]
    jpeg = Perturbation.parse("jpeg:50")
    assert np.array_equal(jpeg.apply(pixels), jpeg.apply(pixels))


def test_blur_removes_high_frequency_energy():
    pixels = photo_like()
    blurred = Perturbation.parse("blur:1.5").apply(pixels)
    assert blurred.shape == pixels.shape

    def high_frequency_energy(image: np.ndarray) -> float:
        channels = [image[..., channel].astype(float) for channel in range(3)]
        return float(np.mean([np.square(laplace(channel)).mean() for channel in channels]))

    assert high_frequency_energy(blurred) < 0.2 * high_frequency_energy(pixels)
    assert high_frequency_energy(Perturbation.parse("blur:3").apply(pixels)) < high_frequency_energy(blurred)


def test_none_is_an_identical_copy():
    pixels = photo_like()
    copy = Perturbation.parse("none").apply(pixels)
    assert np.array_equal(copy, pixels) and copy is not pixels


@pytest.mark.parametrize(
    ("name", "shape"), [("resize:0.5", (48, 64, 3)), ("resize:1.5", (144, 192, 3)), ("crop:0.5", (48, 64, 3))]
)
def test_resize_and_crop_shapes(name, shape):
    assert Perturbation.parse(name).apply(photo_like()).shape == shape


def test_images_never_shrink_below_the_minimum_short_side():
    pixels = photo_like(96, 128)
    clamped_width = round(128 * MIN_SHORT_SIDE / 96)
    assert Perturbation.parse("resize:0.1").apply(pixels).shape == (MIN_SHORT_SIDE, clamped_width, 3)
    assert Perturbation.parse("crop:0.1").apply(pixels).shape[0] == MIN_SHORT_SIDE
    small = photo_like(20, 30)
    assert Perturbation.parse("resize:0.5").apply(small).shape == small.shape
    assert Perturbation.parse("resize:2").apply(small).shape == (40, 60, 3)


@pytest.mark.parametrize("name", ["resize:0.5", "resize:1.7", "crop:0.6", "jpeg:60", "blur:1"])
def test_a_mask_square_ends_up_where_the_image_square_does(name):
    image, mask = square_image(100, 140, top=30, left=70, side=24)
    perturbation = Perturbation.parse(name)
    perturbed_image, perturbed_mask = perturbation.apply(image), perturbation.apply_to_mask(mask)
    assert perturbed_mask.shape == perturbed_image.shape[:2] and perturbed_mask.dtype == bool
    bright = perturbed_image.mean(axis=2) > 127
    overlap = np.logical_and(bright, perturbed_mask).sum() / np.logical_or(bright, perturbed_mask).sum()
    assert overlap > 0.85


def test_crop_cuts_the_mask_with_the_image():
    image, mask = square_image(100, 100, top=0, left=0, side=30)
    perturbation = Perturbation.parse("crop:0.6")  # keeps rows and columns 20..79
    cropped = perturbation.apply_to_mask(mask)
    assert cropped.shape == (60, 60)
    assert cropped[:10, :10].all() and cropped.sum() == 100


def test_inputs_of_the_wrong_kind_are_refused():
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        Perturbation.parse("blur:1").apply(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="boolean mask"):
        Perturbation.parse("resize:0.5").apply_to_mask(np.zeros((8, 8), np.uint8))
