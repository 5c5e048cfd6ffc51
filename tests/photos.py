"""Real photographs for the expert tests: scikit-image's pictures written as JPEG or PNG files at
chosen sizes, and read back as the RGB uint8 arrays experts take."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

JPEG_QUALITY = 90
# (file name, pixels, (width, height) to resize to, or None to keep the picture's own size)
Photo = tuple[str, np.ndarray, "tuple[int, int] | None"]


def write_photos(folder: Path, photos: Sequence[Photo]) -> list[Path]:
    """Each photo resized (bicubic) and saved in `folder`, as JPEG or PNG by its name's suffix."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, pixels, size in photos:
        image = Image.fromarray(pixels)
        if size is not None:
            image = image.resize(size, Image.Resampling.BICUBIC)
        path = folder / name
        image.save(path, quality=JPEG_QUALITY) if path.suffix == ".jpg" else image.save(path)
        paths.append(path)
    return paths


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def photo_arrays(folder: Path, photos: Sequence[Photo]) -> list[np.ndarray]:
    """The photos as an expert sees them after a round trip through their files."""
    return [read_rgb(path) for path in write_photos(folder, photos)]


def random_crops(photos: Sequence[np.ndarray], side: int, seed: int, per_photo: int) -> list[np.ndarray]:
    """`per_photo` random side x side crops of each photo, the same for the same seed."""
    rng = np.random.default_rng(seed)
    out = []
    for photo in photos:
        for _ in range(per_photo):
            top, left = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
            out.append(np.ascontiguousarray(photo[top : top + side, left : left + side]))
    return out
