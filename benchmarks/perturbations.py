"""Post-processing perturbations for robustness tests, as AIGCDetectBenchmark and SIDBench apply
them: JPEG re-encoding at a quality, Gaussian blur of a sigma, resizing by a factor, centre
cropping to a fraction of each side.

Each is written as a short name (`jpeg:75`, `blur:1.5`, `resize:0.5`, `crop:0.8`, `none`) so that a
robustness table can name its columns and a command line can list them. Every perturbation is
deterministic, and `apply_to_mask` moves a ground-truth mask exactly as `apply` moves the image,
so localization can be scored on perturbed images too.

No perturbation shrinks an image below MIN_SHORT_SIDE pixels on its short side: a stronger
resize or crop is clamped to that size (keeping the aspect ratio), and an image already smaller is
not shrunk at all. Detectors need some pixels to look at, and a fixed floor keeps a sweep over
factors from failing on its smallest images."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
from PIL import Image, ImageFilter
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from coe.core.errors import UserError

MIN_SHORT_SIDE = 32
MAX_RESIZE_SCALE = 4.0
PerturbationKind = Literal["none", "jpeg", "blur", "resize", "crop"]
_SYNTAX = "none, jpeg:QUALITY, blur:SIGMA, resize:SCALE or crop:FRACTION"


class Perturbation(BaseModel):
    """One perturbation: `kind` and its strength `value` (JPEG quality 1..100, blur sigma > 0,
    resize scale in (0, 4], crop fraction of each side in (0, 1]; none for `none`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: PerturbationKind
    value: float | None = None

    @model_validator(mode="after")
    def _check_value(self) -> Perturbation:
        value = self.value
        if self.kind == "none":
            if value is not None:
                raise ValueError(f"'none' takes no value, got {value}")
            return self
        if value is None or not np.isfinite(value):
            raise ValueError(f"'{self.kind}' needs a finite value, got {value}")
        if self.kind == "jpeg" and not (value == int(value) and 1 <= value <= 100):
            raise ValueError(f"JPEG quality must be an integer from 1 to 100, got {value}")
        if self.kind == "blur" and not value > 0:
            raise ValueError(f"blur sigma must be > 0, got {value}")
        if self.kind == "resize" and not 0 < value <= MAX_RESIZE_SCALE:
            raise ValueError(f"resize scale must be in (0, {MAX_RESIZE_SCALE:g}], got {value}")
        if self.kind == "crop" and not 0 < value <= 1:
            raise ValueError(f"crop fraction must be in (0, 1], got {value}")
        return self

    @classmethod
    def parse(cls, text: str) -> Perturbation:
        """From its short name: `none`, `jpeg:75`, `blur:1.5`, `resize:0.5`, `crop:0.8`."""
        kind, separator, value_text = text.strip().partition(":")
        if kind not in get_args(PerturbationKind):
            raise ValueError(f"unknown perturbation {text!r}; expected {_SYNTAX}")
        if kind == "none":
            if separator:
                raise ValueError(f"'none' takes no value, got {text!r}")
            return cls(kind="none")
        try:
            value = float(value_text)
        except ValueError:
            raise ValueError(
                f"perturbation {text!r} needs a number after '{kind}:'; expected {_SYNTAX}"
            ) from None
        return cls(kind=kind, value=value)

    @property
    def name(self) -> str:
        """The canonical short name, which `parse` reads back: `jpeg:75`, `blur:1.5`, `resize:2`."""
        if self.value is None:
            return self.kind
        text = repr(self.value)
        return f"{self.kind}:{text.removesuffix('.0')}"

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """The perturbed copy of an HxWx3 uint8 image."""
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 uint8 image, got {pixels.dtype} of shape {pixels.shape}")
        if self.kind == "none":
            return pixels.copy()
        if self.kind == "crop":
            return pixels[self._crop_window(pixels.shape[:2])].copy()
        image = Image.fromarray(pixels)
        if self.kind == "jpeg":
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=int(self.value))
            return np.array(Image.open(buffer).convert("RGB"))
        if self.kind == "blur":
            # Pillow's GaussianBlur radius is the standard deviation of the kernel.
            return np.array(image.filter(ImageFilter.GaussianBlur(radius=self.value)))
        return np.array(image.resize(self._resized_size(pixels.shape[:2]), Image.Resampling.BICUBIC))

    def apply_to_mask(self, mask: np.ndarray) -> np.ndarray:
        """The HxW boolean mask of an image, aligned with `apply` of that image: unchanged by JPEG
        and blur (they move no pixel), resized by nearest neighbour on the same pixel grid,
        cropped to the same window."""
        if mask.dtype != bool or mask.ndim != 2:
            raise ValueError(f"expected an HxW boolean mask, got {mask.dtype} of shape {mask.shape}")
        if self.kind == "crop":
            return mask[self._crop_window(mask.shape)].copy()
        if self.kind == "resize":
            image = Image.fromarray(mask.astype(np.uint8) * 255)
            return np.array(image.resize(self._resized_size(mask.shape), Image.Resampling.NEAREST)) > 127
        return mask.copy()

    def _factor(self, shape: tuple[int, int]) -> float:
        """The scale (resize) or kept fraction (crop), raised where needed so the short side stays
        at least MIN_SHORT_SIDE pixels, or stays as it is when it is already below that."""
        short_side = min(shape)
        return max(float(self.value), min(1.0, MIN_SHORT_SIDE / short_side))

    def _resized_size(self, shape: tuple[int, int]) -> tuple[int, int]:
        """(width, height) as PIL wants it."""
        factor = self._factor(shape)
        return max(1, round(shape[1] * factor)), max(1, round(shape[0] * factor))

    def _crop_window(self, shape: tuple[int, int]) -> tuple[slice, slice]:
        factor = self._factor(shape)
        height, width = max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))
        top, left = (shape[0] - height) // 2, (shape[1] - width) // 2
        return slice(top, top + height), slice(left, left + width)


def parse_perturbations(names: Sequence[str]) -> list[Perturbation]:
    """Perturbations from their short names, in order; the same perturbation twice (also when
    written differently, `jpeg:75` and `jpeg:75.0`) is refused."""
    perturbations = []
    for name in names:
        try:
            perturbations.append(Perturbation.parse(name))
        except ValidationError as error:
            raise PerturbationError(f"perturbation {name!r}: {error.errors()[0]['msg']}") from None
        except ValueError as error:
            raise PerturbationError(str(error)) from None
    canonical = [perturbation.name for perturbation in perturbations]
    duplicates = sorted({name for name in canonical if canonical.count(name) > 1})
    if duplicates:
        raise PerturbationError(f"perturbation(s) listed more than once: {', '.join(duplicates)}")
    return perturbations


class PerturbationError(UserError, ValueError):
    pass
