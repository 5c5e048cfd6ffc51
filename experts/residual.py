"""Residual expert, after NPR (Tan et al. CVPR 2024, "Rethinking the up-sampling operations in
CNN-based generative network"): the neighbouring-pixel residual r = x - up(down(x, 2)) with
nearest-neighbour resampling, whose energy is measured patch by patch. The descriptor is the
distribution of patch energies, so a locally re-synthesised region shows up as a tail of
patches that are too clean even when the image's global spectrum barely moves."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from experts.base import register_expert
from experts.classic import DescriptorExpert
from experts.spectrum import centre_crop, grey_pixels

QUANTILES = (0.02, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98)


class ResidualParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patch: int = Field(default=32, ge=4, description="side of the patches whose residual energy is measured")
    max_side: int = Field(default=1024, ge=16, description="larger images are centre-cropped to this")
    C: float = Field(default=1.0, gt=0.0, description="inverse regularisation of the logistic regression")


@register_expert("residual")
class ResidualExpert(DescriptorExpert):
    Params = ResidualParams

    def describe(self, image: np.ndarray) -> np.ndarray:
        patch = self.params.patch
        grey = centre_crop(grey_pixels(image), self.params.max_side, multiple=patch)
        coarse = grey[::2, ::2].repeat(2, axis=0).repeat(2, axis=1)
        residual = grey - coarse
        rows, cols = grey.shape[0] // patch, grey.shape[1] // patch
        energy = (residual**2).reshape(rows, patch, cols, patch).mean(axis=(1, 3)).ravel()
        log_energy = np.log(energy + 0.05)
        quantiles = np.quantile(log_energy, QUANTILES)
        median = quantiles[QUANTILES.index(0.5)]
        return np.concatenate([quantiles - median, [median, log_energy.std()]])
