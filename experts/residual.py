"""Residual expert, after NPR (Tan et al. CVPR 2024, "Rethinking the up-sampling operations in
CNN-based generative network"): the neighbouring-pixel residual r = x - up(down(x, 2)) with
nearest-neighbour resampling, measured patch by patch.

Per patch it compares the residual's energy at full resolution with the same residual at half
resolution. Camera noise and real texture keep that ratio within a natural range everywhere,
while content made at a lower resolution and upsampled has coarse structure but (almost) no
fine residual. The descriptor is the distribution of both over the patches, so a locally
re-synthesised region shows up as a tail of patches even when the global spectrum barely moves."""

from __future__ import annotations

import numpy as np
from pydantic import Field
from skimage.transform import downscale_local_mean

from experts.base import register_expert
from experts.classic import DescriptorExpert, DescriptorParams
from experts.pixels import centre_crop, grey_pixels

QUANTILES = np.array([0.02, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98])
MEDIAN = int(np.flatnonzero(QUANTILES == 0.5)[0])
# Added to patch energies before the log: below the residual of uint8 quantisation noise (~0.12).
ENERGY_FLOOR = 0.05


class ResidualParams(DescriptorParams):
    patch: int = Field(
        default=16, ge=4, multiple_of=2, description="side of the patches whose residual is measured"
    )


def neighbour_residual(grey: np.ndarray) -> np.ndarray:
    """x - up(down(x, 2)), both nearest-neighbour: zero wherever 2x2 cells repeat one value."""
    return grey - grey[::2, ::2].repeat(2, axis=0).repeat(2, axis=1)


def patch_log_energy(residual: np.ndarray, patch: int) -> np.ndarray:
    rows, cols = residual.shape[0] // patch, residual.shape[1] // patch
    energy = (residual**2).reshape(rows, patch, cols, patch).mean(axis=(1, 3))
    return np.log(energy + ENERGY_FLOOR).ravel()


def distribution(values: np.ndarray) -> np.ndarray:
    """Quantiles relative to the median, then the median itself: shape and level apart."""
    quantiles = np.quantile(values, QUANTILES)
    return np.append(quantiles - quantiles[MEDIAN], quantiles[MEDIAN])


@register_expert("residual")
class ResidualExpert(DescriptorExpert):
    Params = ResidualParams

    def describe(self, image: np.ndarray) -> np.ndarray:
        patch = self.params.patch
        grey = centre_crop(grey_pixels(image), self.params.max_side, multiple=2 * patch)
        half = downscale_local_mean(grey, (2, 2))
        fine = patch_log_energy(neighbour_residual(grey), patch)
        # The same patches at half resolution, so the two energies describe one region.
        coarse = patch_log_energy(neighbour_residual(half), patch // 2)
        return np.concatenate([distribution(fine), distribution(fine - coarse)])
