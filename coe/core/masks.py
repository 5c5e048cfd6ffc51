"""Masks an expert attached in memory, written as PNG files (8-bit, 0 or 255, the image's size):
one per artifact and one union per expert and image. Paths are recorded relative to the run
folder, so a run folder can be moved or served as it is."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from coe.core.records import Localization

MASKS_DIR = "masks"


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or "artifact"


def _write_png(mask: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255, mode="L").save(partial, format="PNG")
    partial.replace(path)


def save_masks(output: Localization, run_dir: Path, image_key: str) -> Localization:
    """Write `output`'s in-memory masks under run_dir/masks/<image_key>/ and record their paths."""
    folder = Path(MASKS_DIR) / image_key
    for index, artifact in enumerate(output.artifacts):
        if artifact.mask is not None:
            name = folder / f"{output.expert}.{index:02d}.{artifact.category}.{_slug(artifact.phrase)}.png"
            _write_png(artifact.mask, run_dir / name)
            artifact.mask_file = name.as_posix()
    union = output.union_mask
    if union is not None:
        name = folder / f"{output.expert}.union.png"
        _write_png(union, run_dir / name)
        output.union_mask_file = name.as_posix()
    return output
