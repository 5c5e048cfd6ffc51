"""Pixel helpers shared by the frequency-domain experts."""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2gray


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
