"""DCT expert (Frank et al. 2020, "Leveraging frequency analysis for deep fake image
recognition"): the 8x8 block DCT of the grey image, summarised per frequency position as the
median log-magnitude over all blocks. Upsampling leaves periodic energy at fixed positions
(period 2 -> index 7, period 4 -> index 4) that natural images do not have.

The median makes this the expert for artifacts present everywhere in the image: a periodic
upsampling trace is in every block, while edges and locally edited regions are in a minority of
blocks and barely move it."""

from __future__ import annotations

import numpy as np
from pydantic import Field
from scipy import fft

from experts.base import register_expert
from experts.classic import DescriptorExpert, DescriptorParams
from experts.pixels import centre_crop, grey_pixels

# Added to |coefficient| before the log: about uint8 quantisation noise (0.29 rms per orthonormal
# coefficient), below which a magnitude says nothing about the image.
MAGNITUDE_FLOOR = 0.5


class DctParams(DescriptorParams):
    block: int = Field(default=8, ge=2, description="side of the DCT blocks")


@register_expert("dct")
class DctExpert(DescriptorExpert):
    Params = DctParams

    def describe(self, image: np.ndarray) -> np.ndarray:
        block = self.params.block
        grey = centre_crop(grey_pixels(image), self.params.max_side, multiple=block)
        rows, cols = grey.shape[0] // block, grey.shape[1] // block
        blocks = grey.reshape(rows, block, cols, block).transpose(0, 2, 1, 3).reshape(-1, block, block)
        log_magnitude = np.log(np.abs(fft.dctn(blocks, axes=(1, 2), norm="ortho")) + MAGNITUDE_FLOOR)
        # The DC position only carries brightness.
        return np.median(log_magnitude, axis=0).ravel()[1:]
