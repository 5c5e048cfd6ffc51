"""The built-in benchmark: deterministic, counted, grouped by crop, honest about its fakes, and
each simulator leaves its own physical signature."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError
from skimage import data

from benchmarks.autoencoder import Autoencoder, AutoencoderConfig
from benchmarks.builtin import (
    GENERATORS,
    MANIFEST_COLUMNS,
    REAL_GENERATOR,
    BuiltinBenchmarkConfig,
    build_builtin_benchmark,
    split_sizes,
)
from benchmarks.simulators import SIMULATORS, diffusion_smooth, inpaint_local

# Every generator; the autoencoder trained briefly, enough for each reconstruction to resemble its own crop.
SMALL = BuiltinBenchmarkConfig(
    seed=3, n_real=30, image_size=64, fakes_per_generator=10, generators=list(GENERATORS),
    autoencoder=AutoencoderConfig(steps=200, crop=32),
)


@pytest.fixture(scope="module")
def small_benchmark(tmp_path_factory) -> Path:
    return build_builtin_benchmark(tmp_path_factory.mktemp("builtin") / "bench", SMALL)


@pytest.fixture(scope="module")
def rows(small_benchmark) -> list[dict[str, str]]:
    with small_benchmark.open(newline="") as handle:
        return list(csv.DictReader(handle))


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photograph with texture and flat areas, 256 x 256."""
    return data.astronaut()[:256, 128:384].copy()


def test_same_seed_gives_byte_identical_benchmark(small_benchmark, tmp_path):
    again = build_builtin_benchmark(tmp_path / "again", SMALL)
    first_files = sorted(
        p.relative_to(small_benchmark.parent) for p in small_benchmark.parent.rglob("*") if p.is_file()
    )
    second_files = sorted(p.relative_to(again.parent) for p in again.parent.rglob("*") if p.is_file())
    assert first_files == second_files
    for relative in first_files:
        assert (small_benchmark.parent / relative).read_bytes() == (again.parent / relative).read_bytes(), (
            relative
        )


def test_another_seed_gives_other_images(small_benchmark, tmp_path):
    other = build_builtin_benchmark(tmp_path / "other", SMALL.model_copy(update={"seed": 4}))
    assert (other.parent / "real/00000.png").read_bytes() != (
        small_benchmark.parent / "real/00000.png"
    ).read_bytes()


def test_counts_per_split_label_and_generator(rows):
    assert tuple(rows[0]) == MANIFEST_COLUMNS
    counts = Counter((row["split"], row["label"], row["generator"]) for row in rows)
    expected = {
        (split, "real", REAL_GENERATOR): n
        for split, n in split_sizes(SMALL.n_real, SMALL.split_fractions).items()
    }
    for generator in SMALL.generators:
        for split, n in split_sizes(SMALL.fakes_per_generator, SMALL.split_fractions).items():
            expected[(split, "fake", generator)] = n
    assert counts == {key: n for key, n in expected.items() if n}
    assert len(rows) == SMALL.n_real + SMALL.fakes_per_generator * len(SMALL.generators)


def test_split_sizes_round_to_the_total():
    fractions = {"expert_train": 0.4, "router_train": 0.3, "test": 0.3}
    for total in (0, 1, 7, 10, 361):
        sizes = split_sizes(total, fractions)
        assert sum(sizes.values()) == total
        assert all(abs(sizes[split] - total * fraction) < 1 for split, fraction in fractions.items())


def test_rows_point_at_images_of_the_configured_size(small_benchmark, rows):
    for row in rows:
        assert row["label"] == ("real" if row["generator"] == REAL_GENERATOR else "fake")
        assert row["subject"] and row["source"]
        assert pixels(small_benchmark.parent / row["path"]).shape == (SMALL.image_size, SMALL.image_size, 3)


def test_fakes_share_the_split_of_the_real_crop_they_come_from(small_benchmark, rows):
    reals = [
        (row["split"], pixels(small_benchmark.parent / row["path"]).astype(int))
        for row in rows
        if row["label"] == "real"
    ]
    # Found by likeness, which the briefly trained autoencoder's reconstructions lack; its fakes take
    # their crop by the same rule as the simulators'.
    for row in rows:
        if row["label"] == "fake" and row["generator"] in SIMULATORS:
            fake = pixels(small_benchmark.parent / row["path"]).astype(int)
            closest_split, _ = min(reals, key=lambda real: np.abs(real[1] - fake).mean())
            assert closest_split == row["split"], row["path"]


def test_inpainted_fakes_have_a_mask_and_are_real_outside_it(small_benchmark, rows):
    reals = [pixels(small_benchmark.parent / row["path"]) for row in rows if row["label"] == "real"]
    inpainted = [row for row in rows if row["generator"] == "inpaint_local"]
    assert inpainted
    for row in rows:
        assert bool(row["mask_path"]) == (row["generator"] == "inpaint_local")
    for row in inpainted:
        fake = pixels(small_benchmark.parent / row["path"])
        mask = np.asarray(Image.open(small_benchmark.parent / row["mask_path"])) > 0
        assert mask.shape == fake.shape[:2]
        assert 0 < mask.mean() < 0.5
        assert any(np.array_equal(real[~mask], fake[~mask]) for real in reals), row["path"]


def test_readme_says_the_fakes_are_not_real_generators(small_benchmark):
    readme = (small_benchmark.parent / "README.md").read_text()
    assert "NOT made by real text-to-image generators" in readme and "simulated" in readme
    assert all(generator in readme for generator in SMALL.generators)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


def test_the_autoencoder_learns_to_reconstruct_and_retrains_to_the_same_bytes():
    photos = [data.astronaut(), data.coffee(), data.chelsea()]
    crops = [photo[top : top + 64, left : left + 64] for photo in photos for top in (0, 80, 160) for left in (0, 96)]
    config = AutoencoderConfig(steps=300, crop=32, downsamplings=1)
    trained = Autoencoder(config, seed=1).fit(crops)
    # As in the benchmark, the autoencoder gives back crops it was trained on.
    crop = crops[4]
    rebuilt = trained.reconstruct(crop)
    flat = np.broadcast_to(crop.mean(axis=(0, 1)), crop.shape)
    # Far better than the crop's mean colour, still no copy: a decoder's rendering of the crop.
    assert psnr(crop, flat) + 10 < psnr(crop, rebuilt) < 40
    assert np.array_equal(Autoencoder(config, seed=1).fit(crops).reconstruct(crop), rebuilt)
    assert not np.array_equal(Autoencoder(config, seed=2).fit(crops).reconstruct(crop), rebuilt)
    odd = trained.reconstruct(crop[:61, :57])
    assert odd.shape == (61, 57, 3) and odd.dtype == np.uint8


def test_a_share_of_images_of_both_classes_carries_a_jpeg_history(tmp_path):
    cheap = BuiltinBenchmarkConfig(n_real=40, image_size=64, fakes_per_generator=40, generators=["gan_upsample"])
    never = build_builtin_benchmark(tmp_path / "never", cheap.model_copy(update={"jpeg_share": 0.0})).parent
    half = build_builtin_benchmark(tmp_path / "half", cheap).parent
    for label in ("real", "fake"):
        files = sorted((never / label).rglob("*.png"))
        changed = [np.abs(pixels(f).astype(int) - pixels(half / f.relative_to(never))).mean() for f in files]
        # Fakes of a recompressed crop differ too, so count only what a JPEG round trip does to a crop.
        assert 0.25 < np.mean(np.array(changed) > 0) < (0.75 if label == "real" else 1.0), (label, changed)
        assert max(changed) < (10 if label == "real" else 15)
    crop = pixels(half / "real/00000.png")
    assert crop.shape == (64, 64, 3) and (half / "real/00000.png").read_bytes()[:4] == b"\x89PNG"


def test_refuses_to_write_into_a_non_empty_folder(tmp_path):
    (tmp_path / "something.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_builtin_benchmark(tmp_path, SMALL)


@pytest.mark.parametrize(
    "bad",
    [
        {"generators": ["stylegan9"]},
        {"split_fractions": {"expert_train": 0.5, "router_train": 0.3, "test": 0.3}},
        {"split_fractions": {"expert_train": 0.99, "router_train": 0.005, "test": 0.005}, "n_real": 10},
        {"image_size": 100},
    ],
)
def test_config_rejects_unusable_settings(bad):
    with pytest.raises(ValidationError):
        BuiltinBenchmarkConfig(**bad)


def power_spectrum(image: np.ndarray) -> np.ndarray:
    grey = image.astype(np.float64).mean(axis=2)
    return np.abs(np.fft.fft2(grey - grey.mean())) ** 2


def peak_gain(fake: np.ndarray, real: np.ndarray) -> float:
    """How much more a spectral bin stands out from its 9x9 neighbourhood in the fake than in the
    real image, geometric mean over the Nyquist and half-Nyquist bins on both axes."""
    n = real.shape[0]

    def prominence(power: np.ndarray, row: int, col: int) -> float:
        around = power[np.ix_(np.arange(row - 4, row + 5) % n, np.arange(col - 4, col + 5) % n)].ravel()
        return power[row, col] / np.median(np.delete(around, around.size // 2))

    bins = [(n // 2, 0), (0, n // 2), (n // 4, 0), (0, n // 4)]
    gains = [prominence(power_spectrum(fake), *at) / prominence(power_spectrum(real), *at) for at in bins]
    return float(np.exp(np.mean(np.log(gains))))


@pytest.mark.parametrize("name", sorted(SIMULATORS))
def test_only_gan_upsample_adds_peaks_at_nyquist_and_half_nyquist(name, photo):
    fake, _ = SIMULATORS[name](photo, np.random.default_rng(0))
    if name == "gan_upsample":
        assert peak_gain(fake, photo) > 10
    else:
        assert peak_gain(fake, photo) < 3


def high_band_fraction(image: np.ndarray) -> float:
    power = power_spectrum(image)
    radius = np.hypot(
        *np.meshgrid(np.fft.fftfreq(image.shape[0]), np.fft.fftfreq(image.shape[1]), indexing="ij")
    )
    return float(power[radius > 0.3].sum() / power.sum())


def test_diffusion_smooth_loses_high_frequencies(photo):
    fake, mask = diffusion_smooth(photo, np.random.default_rng(0))
    assert mask is None
    assert high_band_fraction(fake) < 0.5 * high_band_fraction(photo)


def test_inpaint_local_is_local(photo):
    fake, mask = inpaint_local(photo, np.random.default_rng(0))
    assert mask.dtype == bool and mask.shape == photo.shape[:2] and mask.any()
    assert np.array_equal(fake[~mask], photo[~mask])

    # Inside the region the fine neighbour residual is gone, while the global spectrum barely moves.
    def fine_residual(image):
        grey = image.astype(np.float64).mean(axis=2)
        return grey - grey[::2, ::2].repeat(2, axis=0).repeat(2, axis=1)

    assert (fine_residual(fake)[mask] ** 2).mean() < 0.2 * (fine_residual(photo)[mask] ** 2).mean()
    assert high_band_fraction(fake) > 0.7 * high_band_fraction(photo)


@pytest.mark.parametrize("name", sorted(SIMULATORS))
def test_simulators_are_deterministic_per_generator_and_vary_between_draws(name, photo):
    first, first_mask = SIMULATORS[name](photo, np.random.default_rng(7))
    again, again_mask = SIMULATORS[name](photo, np.random.default_rng(7))
    other, _ = SIMULATORS[name](photo, np.random.default_rng(8))
    assert first.dtype == np.uint8 and first.shape == photo.shape
    assert np.array_equal(first, again)
    assert (first_mask is None) == (again_mask is None)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first, photo)
