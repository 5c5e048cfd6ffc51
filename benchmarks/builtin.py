"""The built-in benchmark: real crops of photographs that installed packages ship, and fakes made
from them: by default their reconstructions through a small autoencoder trained here when the
benchmark is built (`benchmarks.autoencoder`), and on request the SIMULATED artifacts of
`benchmarks.simulators` (not real generators).

Every crop is one group: its real image and the fakes derived from it share a split, so an
expert is never tested on a fake whose own real crop it was trained on. The three splits feed
the three stages of Bench-CoE: `expert_train` trains the experts, `router_train` trains the
router on the experts' outcomes, `test` evaluates the whole. The same seed always gives
byte-identical images and manifest on one machine (the autoencoder trains with torch's
deterministic algorithms; another CPU may round its arithmetic differently)."""

from __future__ import annotations

import csv
import inspect
import io
import json
import os
import shutil
import zlib
from importlib import resources
from importlib.util import find_spec
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import benchmarks.autoencoder as autoencoder_module
from benchmarks.autoencoder import Autoencoder, AutoencoderConfig
from benchmarks.simulators import SIMULATORS, Simulator

Split = Literal["expert_train", "router_train", "test"]
REAL_GENERATOR = "real"
AUTOENCODER = "autoencoder"
GENERATORS = (AUTOENCODER, *SIMULATORS)


class ManifestRow(BaseModel):
    """One line of manifest.csv; paths are relative to the benchmark folder."""

    model_config = ConfigDict(extra="forbid")
    path: str
    label: Literal["real", "fake"]
    subject: str
    generator: str
    mask_path: str = Field(default="", description="ground-truth region of a local edit; empty if none")
    split: Split
    source: str = Field(description="the shipped photograph the crop comes from")


MANIFEST_COLUMNS = tuple(ManifestRow.model_fields)
MANIFEST_FILE = "manifest.csv"


class SourcePhoto(BaseModel):
    """A real photograph shipped inside an installed package."""

    model_config = ConfigDict(frozen=True)
    package: str
    path: str
    subject: str

    @property
    def name(self) -> str:
        return f"{self.package}/{self.path}"


# Only files present in the wheels: skimage.data functions that download through pooch are left
# out, and so are skimage's synthetic images (chessboard, phantom, logo, color, horse).
SOURCE_PHOTOS = (
    SourcePhoto(package="skimage", path="data/astronaut.png", subject="human"),
    SourcePhoto(package="skimage", path="data/camera.png", subject="human"),
    SourcePhoto(package="matplotlib", path="mpl-data/sample_data/grace_hopper.jpg", subject="human"),
    SourcePhoto(package="skimage", path="data/chelsea.png", subject="animal"),
    SourcePhoto(package="skimage", path="data/coffee.png", subject="object"),
    SourcePhoto(package="skimage", path="data/coins.png", subject="object"),
    SourcePhoto(package="skimage", path="data/motorcycle_left.png", subject="object"),
    SourcePhoto(package="skimage", path="data/motorcycle_right.png", subject="object"),
    SourcePhoto(package="skimage", path="data/rocket.jpg", subject="scene"),
    SourcePhoto(package="sklearn", path="datasets/images/china.jpg", subject="scene"),
    SourcePhoto(package="sklearn", path="datasets/images/flower.jpg", subject="plant"),
    SourcePhoto(package="skimage", path="data/grass.png", subject="texture"),
    SourcePhoto(package="skimage", path="data/gravel.png", subject="texture"),
    SourcePhoto(package="skimage", path="data/brick.png", subject="texture"),
    SourcePhoto(package="skimage", path="data/page.png", subject="document"),
    SourcePhoto(package="skimage", path="data/text.png", subject="document"),
    SourcePhoto(package="skimage", path="data/hubble_deep_field.jpg", subject="astronomy"),
    SourcePhoto(package="skimage", path="data/moon.png", subject="astronomy"),
    SourcePhoto(package="skimage", path="data/retina.jpg", subject="medical"),
    SourcePhoto(package="skimage", path="data/ihc.png", subject="medical"),
    SourcePhoto(package="skimage", path="data/cell.png", subject="medical"),
)


def read_builtin_manifest(benchmark_dir: Path, split: Split | None = None) -> list[dict[str, str]]:
    """The manifest's rows (all, or one split's), in file order; paths are relative to benchmark_dir."""
    with (benchmark_dir / MANIFEST_FILE).open(newline="") as handle:
        return [row for row in csv.DictReader(handle) if split is None or row["split"] == split]


def split_sizes(total: int, fractions: dict[Split, float]) -> dict[Split, int]:
    """Largest-remainder rounding, so the sizes add up to `total` exactly."""
    exact = {split: total * fraction for split, fraction in fractions.items()}
    sizes = {split: int(np.floor(value)) for split, value in exact.items()}
    by_remainder = sorted(exact, key=lambda split: (sizes[split] - exact[split], list(exact).index(split)))
    for split in by_remainder[: total - sum(sizes.values())]:
        sizes[split] += 1
    return sizes


class BuiltinBenchmarkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    n_real: int = Field(default=360, ge=3, description="real crops; each crop is one split group")
    image_size: int = Field(
        default=256, ge=32, multiple_of=8, description="side of every image; photos smaller are skipped"
    )
    fakes_per_generator: int = Field(default=360, ge=0)
    # The simulators are left out by default: experts trained on them learn the simulator, not what
    # real generators leave (README, "The wild check"), and mixed in they dilute what carries over.
    generators: list[str] = [AUTOENCODER]
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    # Most photographs have been JPEG files; without this every built-in image would be one the
    # experts, and the router's novelty gate, had never seen compressed.
    jpeg_share: float = Field(
        default=0.5, ge=0.0, le=1.0,
        description="share of images, real and fake alike, given a JPEG history (encoded at a random quality of "
        "jpeg_quality, decoded, stored as PNG like the rest)",
    )
    jpeg_quality: tuple[int, int] = (65, 95)
    max_crop_scale: float = Field(
        default=2.5, ge=1.0, description="crops span 1x to this many times image_size, then are downscaled"
    )
    split_fractions: dict[Split, float] = {"expert_train": 0.4, "router_train": 0.3, "test": 0.3}

    @field_validator("generators")
    @classmethod
    def _known_generators(cls, generators: list[str]) -> list[str]:
        unknown = set(generators) - set(GENERATORS)
        if unknown:
            raise ValueError(f"unknown generators {sorted(unknown)}; known: {sorted(GENERATORS)}")
        return generators

    @model_validator(mode="after")
    def _splits_are_usable(self) -> BuiltinBenchmarkConfig:
        if any(fraction < 0 for fraction in self.split_fractions.values()):
            raise ValueError("split fractions must be non-negative")
        if not np.isclose(sum(self.split_fractions.values()), 1.0):
            raise ValueError(f"split fractions must sum to 1, got {self.split_fractions}")
        reals = split_sizes(self.n_real, self.split_fractions)
        fakes = split_sizes(self.fakes_per_generator, self.split_fractions)
        starved = [split for split in self.split_fractions if fakes[split] and not reals[split]]
        if starved:
            raise ValueError(
                f"splits {starved} would get fakes but no real crop to make them from; raise n_real"
            )
        return self


def _photo_file(photo: SourcePhoto) -> Path:
    # A missing photo is an error, not a skip: the benchmark must be the same for a seed everywhere.
    path = Path(str(resources.files(photo.package).joinpath(photo.path))) if find_spec(photo.package) else None
    if path is None or not path.is_file():
        raise RuntimeError(f"the built-in benchmark needs {photo.name}; install the package {photo.package!r}")
    return path


def _load_photos(image_size: int) -> list[tuple[SourcePhoto, np.ndarray]]:
    photos = []
    for photo in SOURCE_PHOTOS:
        pixels = np.asarray(Image.open(_photo_file(photo)).convert("RGB"))
        if min(pixels.shape[:2]) >= image_size:
            photos.append((photo, pixels))
    if not photos:
        raise RuntimeError(f"no shipped photograph is at least {image_size} pixels on its short side")
    return photos


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """One independent stream per image, so each image depends only on (seed, what, which)."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


def _real_crop(photo: np.ndarray, size: int, max_scale: float, rng: np.random.Generator) -> np.ndarray:
    """A random square crop of varied scale, downscaled (never upscaled), flipped and jittered."""
    height, width = photo.shape[:2]
    side = size * rng.uniform(1.0, min(max_scale, min(height, width) / size))
    top, left = rng.uniform(0, height - side), rng.uniform(0, width - side)
    crop = Image.fromarray(photo).resize(
        (size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side)
    )
    pixels = np.asarray(crop, dtype=np.float64)
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    gain = rng.uniform(0.9, 1.1) * rng.uniform(0.96, 1.04, size=3)
    pixels = pixels * gain + rng.uniform(-8.0, 8.0)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _with_jpeg_history(pixels: np.ndarray, config: BuiltinBenchmarkConfig, key: str) -> np.ndarray:
    """The image, or (for a `jpeg_share` of images, drawn by its path) the image after a JPEG round trip."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 2, zlib.crc32(key.encode())]))
    if rng.random() >= config.jpeg_share:
        return pixels
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, format="JPEG", quality=int(rng.integers(*config.jpeg_quality, endpoint=True)))
    with Image.open(encoded) as decoded:
        return np.asarray(decoded.convert("RGB"))


def _save_png(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Fast zlib level: files are a little larger, but building stays well under a minute.
    Image.fromarray(pixels).save(path, format="PNG", compress_level=1)


def _readme(config: BuiltinBenchmarkConfig) -> str:
    def summary(generator: str) -> str:
        """The first paragraph of the generator's docstring, on one line."""
        documented = autoencoder_module if generator == AUTOENCODER else SIMULATORS[generator]
        return " ".join(inspect.cleandoc(documented.__doc__).split("\n\n")[0].split())

    fingerprints = "\n".join(f"- {generator}: {summary(generator)}" for generator in config.generators)
    return f"""# coe built-in benchmark: reconstructions and simulated artifacts

The fakes here are NOT made by real text-to-image generators. Each is a crop of a real photograph
reconstructed by a small autoencoder trained when the benchmark was built (`autoencoder`), or with
one simulated generator fingerprint imprinted by `benchmarks.simulators`:

{fingerprints}

Scores on this benchmark say whether an expert sees these traces; they are not a measurement on
real-world generators (`coe wild` is). Real images are crops of photographs that installed Python packages ship
(scikit-image, scikit-learn, matplotlib): see the `source` column of manifest.csv. Ground-truth
regions of local edits are under masks/.

A real crop and the fakes made from it always share a split: `expert_train` trains the experts,
`router_train` the router, `test` evaluates.

## Configuration

```json
{json.dumps(config.model_dump(), indent=2)}
```
"""


def build_builtin_benchmark(out_dir: Path, config: BuiltinBenchmarkConfig | None = None) -> Path:
    """Write the benchmark into `out_dir` (absent or empty); returns its manifest.

    It is written into a hidden sibling folder and moved into place once complete, so an
    interrupted build never leaves a half-written benchmark where a finished one is expected."""
    config = config or BuiltinBenchmarkConfig()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; the benchmark is only written into a fresh folder")
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _write_benchmark(staging, config)
        staging.replace(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir / MANIFEST_FILE


def _fake_makers(config: BuiltinBenchmarkConfig, reals: list[np.ndarray]) -> dict[str, Simulator]:
    """What makes each configured generator's fakes; the autoencoder learns from every real crop
    first (it is the generator, not a detector: the splits keep detectors honest)."""
    makers = {name: SIMULATORS[name] for name in config.generators if name in SIMULATORS}
    if AUTOENCODER in config.generators and config.fakes_per_generator:
        trained = Autoencoder(config.autoencoder, config.seed).fit(reals)
        makers[AUTOENCODER] = lambda real, rng: (trained.reconstruct(real), None)
    return makers


def _write_benchmark(out_dir: Path, config: BuiltinBenchmarkConfig) -> None:
    photos = _load_photos(config.image_size)
    order_rng = _rng(config.seed, 0, 0)
    crop_photo = order_rng.permutation(np.arange(config.n_real) % len(photos))
    real_counts = split_sizes(config.n_real, config.split_fractions)
    crop_split = [
        str(split) for split in order_rng.permutation([s for s, n in real_counts.items() for _ in range(n)])
    ]

    rows: list[ManifestRow] = []
    reals = []
    for index in range(config.n_real):
        photo, pixels = photos[crop_photo[index]]
        row = ManifestRow(
            path=f"real/{index:05d}.png",
            label="real",
            subject=photo.subject,
            generator=REAL_GENERATOR,
            split=crop_split[index],
            source=photo.name,
        )
        real = _real_crop(pixels, config.image_size, config.max_crop_scale, _rng(config.seed, 1, index))
        # Fakes are made from the real crop as saved, so an inpainted one is the saved crop outside its mask.
        real = _with_jpeg_history(real, config, row.path)
        reals.append(real)
        _save_png(real, out_dir / row.path)
        rows.append(row)

    crops_by_split = {
        split: [i for i, s in enumerate(crop_split) if s == split] for split in config.split_fractions
    }
    fake_counts = split_sizes(config.fakes_per_generator, config.split_fractions)
    makers = _fake_makers(config, reals)
    for generator_number, generator in enumerate(config.generators):
        stream = zlib.crc32(generator.encode())
        fake_index = 0
        for split, crops in crops_by_split.items():
            for k in range(fake_counts[split]):
                # Each generator starts further along the split's crops, so a crop rarely feeds two.
                crop = crops[(generator_number * fake_counts[split] + k) % len(crops)]
                photo, _ = photos[crop_photo[crop]]
                fake, mask = makers[generator](reals[crop], _rng(config.seed, stream, fake_index))
                row = ManifestRow(
                    path=f"fake/{generator}/{fake_index:05d}.png",
                    label="fake",
                    subject=photo.subject,
                    generator=generator,
                    split=split,
                    source=photo.name,
                    mask_path="" if mask is None else f"masks/{generator}/{fake_index:05d}.png",
                )
                # A fake of its own making gets its own history; a local edit keeps its crop's.
                _save_png(fake if mask is not None else _with_jpeg_history(fake, config, row.path), out_dir / row.path)
                if mask is not None:
                    _save_png(mask.astype(np.uint8) * 255, out_dir / row.mask_path)
                rows.append(row)
                fake_index += 1

    with (out_dir / MANIFEST_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(row.model_dump() for row in rows)
    (out_dir / "README.md").write_text(_readme(config))
