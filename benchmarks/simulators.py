"""Simulated generator artifacts for the built-in benchmark.

These are NOT real generative models. Each function takes a real photograph and imprints one
physical fingerprint that the literature attributes to a family of generators, so that the
frequency/noise experts can be trained and compared without downloading any model or data set:

- `gan_upsample`: the phase-dependent gain of transposed-convolution upsampling (Odena et al. 2016,
  "Deconvolution and checkerboard artifacts"): periodic peaks at the Nyquist and half-Nyquist
  frequencies, while content and fine detail stay those of the photograph.
- `diffusion_smooth`: the missing sensor noise of decoded diffusion images (Corvi et al. 2023):
  fine detail is smoothed away and replaced by a spatially correlated synthetic texture, so the
  spectrum falls off at high frequencies.
- `inpaint_local`: a local inpainting: an elliptical region is re-synthesised from an
  over-smoothed low-resolution version and blended in; every pixel outside the returned mask is
  the photograph's own.

Every simulator draws its strength from a range, so no expert can learn a constant.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy.ndimage import convolve1d, gaussian_filter
from skimage.draw import ellipse

Simulator = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray | None]]

# Odd-phase taps of the transposed-convolution kernel [tap, 1, tap]: tap = 0.5 is exact bilinear
# interpolation, any other value gives odd and even output pixels different gains.
TAP_OFFSET_RANGE = (0.006, 0.02)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _area_downsample(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    cropped = image[:height, :width]
    return cropped.reshape(height // 2, 2, width // 2, 2, -1).mean(axis=(1, 3))


def _transposed_upsample(low: np.ndarray, tap: float, shape: tuple[int, int]) -> np.ndarray:
    """Zero insertion then the separable kernel [tap, 1, tap], like a stride-2 transposed conv."""
    zero_inserted = np.zeros((2 * low.shape[0], 2 * low.shape[1], low.shape[2]))
    zero_inserted[::2, ::2] = low
    kernel = np.array([tap, 1.0, tap])
    upsampled = convolve1d(convolve1d(zero_inserted, kernel, axis=0, mode="mirror"), kernel, axis=1, mode="mirror")
    padded = np.pad(upsampled, ((0, shape[0] - upsampled.shape[0]), (0, shape[1] - upsampled.shape[1]), (0, 0)), "edge")
    return padded


def _checkerboard(image: np.ndarray, tap: float) -> np.ndarray:
    """What a transposed conv with `tap` adds to the image over exact bilinear upsampling."""
    low = _area_downsample(image)
    shape = image.shape[:2]
    return _transposed_upsample(low, tap, shape) - _transposed_upsample(low, 0.5, shape)


def _random_tap(rng: np.random.Generator) -> float:
    return 0.5 + rng.choice([-1.0, 1.0]) * rng.uniform(*TAP_OFFSET_RANGE)


def gan_upsample(real: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, None]:
    """The last two upsampling stages of a generator, each a transposed conv with uneven taps.

    The final stage leaves a period-2 gain pattern (Nyquist peaks); the stage before it works at
    half resolution, so its period-2 pattern becomes period 4 here (half-Nyquist peaks)."""
    image = real.astype(np.float64)
    final_stage = _checkerboard(image, _random_tap(rng))
    half_resolution = _area_downsample(image)
    earlier_stage = _transposed_upsample(_checkerboard(half_resolution, _random_tap(rng)), 0.5, image.shape[:2])
    return _to_uint8(image + final_stage + earlier_stage), None


def diffusion_smooth(real: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, None]:
    """Sensor noise and fine detail smoothed away, then a correlated synthetic texture added back."""
    image = real.astype(np.float64)
    smoothed = gaussian_filter(image, sigma=(rng.uniform(0.9, 1.6), rng.uniform(0.9, 1.6), 0))
    texture = gaussian_filter(rng.standard_normal(image.shape[:2]), sigma=rng.uniform(0.6, 1.0))
    texture *= rng.uniform(1.0, 3.0) / texture.std()
    return _to_uint8(smoothed + texture[..., None]), None


def _random_ellipse_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    height, width = shape
    mask = np.zeros(shape, dtype=bool)
    rows, cols = ellipse(
        r=rng.uniform(0.3, 0.7) * height,
        c=rng.uniform(0.3, 0.7) * width,
        r_radius=rng.uniform(0.12, 0.3) * height,
        c_radius=rng.uniform(0.12, 0.3) * width,
        shape=shape,
        rotation=rng.uniform(-np.pi, np.pi),
    )
    mask[rows, cols] = True
    return mask


def inpaint_local(real: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An elliptical region re-synthesised from an over-smoothed low-resolution version.

    The blend weight fades in from the mask's border but is zero outside it, so the photograph's
    own pixels are untouched there."""
    height, width = real.shape[:2]
    mask = _random_ellipse_mask((height, width), rng)
    factor = rng.uniform(3.0, 6.0)
    low_size = (max(1, round(width / factor)), max(1, round(height / factor)))
    resynthesised = np.asarray(
        Image.fromarray(real).resize(low_size, Image.Resampling.BOX).resize((width, height), Image.Resampling.BICUBIC),
        dtype=np.float64,
    )
    weight = gaussian_filter(mask.astype(np.float64), sigma=2.0) * mask
    blended = real * (1.0 - weight[..., None]) + resynthesised * weight[..., None]
    fake = np.where(mask[..., None], _to_uint8(blended), real)
    return fake, mask


SIMULATORS: dict[str, Simulator] = {
    "gan_upsample": gan_upsample,
    "diffusion_smooth": diffusion_smooth,
    "inpaint_local": inpaint_local,
}
