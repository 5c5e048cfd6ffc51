"""Thumbnails of the analysed images, written once per image (by content id) into the run folder,
for the run report: JPEG, at most THUMBNAIL_SIDE pixels on the longer side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

THUMBNAILS_DIR = "thumbnails"
THUMBNAIL_SIDE = 256
JPEG_QUALITY = 85


def thumbnail_file(image_id: str) -> str:
    """Where an image's thumbnail lives, relative to the run folder."""
    return f"{THUMBNAILS_DIR}/{image_id[:16]}.jpg"


def write_thumbnail(pixels: np.ndarray, run_dir: Path, image_id: str) -> str:
    """The thumbnail of an RGB image, unless an earlier chunk or attempt wrote it; its relative path."""
    name = thumbnail_file(image_id)
    path = run_dir / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(pixels)
        # reducing_gap: a fast box reduction first, then Lanczos, as good as Lanczos alone at this size.
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS, reducing_gap=3.0)
        partial = path.with_name(path.name + ".partial")
        image.save(partial, format="JPEG", quality=JPEG_QUALITY)
        partial.replace(path)
    return name
