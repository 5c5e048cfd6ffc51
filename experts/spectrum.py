"""Spectrum expert (Durall et al. 2020, "Watch your up-convolution"): the azimuthal average of
the log-magnitude Fourier spectrum of the grey image, a 1-D profile from DC to Nyquist.

The image is never resized: resampling rewrites exactly the high frequencies this expert reads.
Large images are centre-cropped instead, which keeps the spectrum's shape."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import fft
from scipy.signal.windows import hann
from skimage.color import rgb2gray

from experts.base import register_expert
from experts.classic import DescriptorExpert


def grey_pixels(image: np.ndarray) -> np.ndarray:
    """Luminance on the 0-255 scale of the uint8 input, so quantisation noise keeps its size."""
    return rgb2gray(image) * 255.0


def centre_crop(grey: np.ndarray, max_side: int, multiple: int) -> np.ndarray:
    """The central part, at most max_side per side, each side a multiple of `multiple`."""
    height, width = (min(side, max_side) // multiple * multiple for side in grey.shape)
    if height == 0 or width == 0:
        raise ValueError(f"image {grey.shape} is smaller than {multiple} pixels on a side")
    top, left = (grey.shape[0] - height) // 2, (grey.shape[1] - width) // 2
    return grey[top : top + height, left : left + width]


class SpectrumParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_bins: int = Field(default=48, ge=4, description="radial bins from DC to Nyquist")
    max_side: int = Field(default=512, ge=16, description="larger images are centre-cropped to this")
    C: float = Field(default=1.0, gt=0.0, description="inverse regularisation of the logistic regression")


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
        profile = np.bincount(bins, log_magnitude, self.params.n_bins) / np.bincount(bins, minlength=self.params.n_bins)
        # Subtracting the mean makes the profile blind to contrast, which says nothing about origin.
        return profile - profile.mean()
