"""Spectrum expert (Durall et al. 2020, "Watch your up-convolution"): the azimuthal average of
the log-magnitude Fourier spectrum of the grey image, a 1-D profile from DC to Nyquist.

The image is never resized: resampling rewrites exactly the high frequencies this expert reads.
Large images are centre-cropped instead, which keeps the spectrum's shape."""

from __future__ import annotations

import numpy as np
from pydantic import Field
from scipy import fft
from scipy.signal.windows import hann

from experts.base import register_expert
from experts.classic import DescriptorExpert, DescriptorParams, MaxSide, Regularisation
from experts.pixels import centre_crop, grey_pixels


class SpectrumParams(DescriptorParams):
    n_bins: int = Field(default=48, ge=4, description="radial bins from DC to Nyquist")
    max_side: MaxSide = 512
    # Strong regularisation: neighbouring radial bins are highly correlated.
    C: Regularisation = 0.1


@register_expert("spectrum")
class SpectrumExpert(DescriptorExpert):
    Params = SpectrumParams

    def describe(self, image: np.ndarray) -> np.ndarray:
        grey = centre_crop(grey_pixels(image), self.params.max_side, multiple=2)
        # The window stops the image's borders from spreading a cross of energy to high frequencies.
        window = np.outer(hann(grey.shape[0], sym=False), hann(grey.shape[1], sym=False))
        magnitude = np.abs(fft.fft2((grey - grey.mean()) * window))
        radius = np.hypot(*np.meshgrid(fft.fftfreq(grey.shape[0]), fft.fftfreq(grey.shape[1]), indexing="ij"))
        # Only whole rings (radius <= Nyquist) and no DC, which the mean removal zeroed.
        inside = (radius > 0) & (radius <= 0.5)
        bins = np.minimum((radius[inside] / 0.5 * self.params.n_bins).astype(int), self.params.n_bins - 1)
        log_magnitude = np.log(magnitude[inside] + 1e-3)
        sums = np.bincount(bins, log_magnitude, self.params.n_bins)
        counts = np.bincount(bins, minlength=self.params.n_bins)
        # Small images leave some rings without a single DFT sample: fill them from their neighbours.
        centres = np.arange(self.params.n_bins)
        filled = counts > 0
        profile = np.interp(centres, centres[filled], sums[filled] / counts[filled])
        # Subtracting the mean makes the profile blind to contrast, which says nothing about origin.
        return profile - profile.mean()
