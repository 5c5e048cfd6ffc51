"""Simulated generator artifacts for the built-in benchmark.

These are NOT real generative models. Each function takes a real photograph and imprints one
physical fingerprint that the literature attributes to a family of generators, so that the
frequency/noise experts can be trained and compared without downloading any model or data set:

- `gan_upsample`: the phase-dependent gain of transposed-convolution upsampling (Odena et al.
  2016, "Deconvolution and checkerboard artifacts"): periodic peaks at the Nyquist and
  half-Nyquist frequencies in every part of the image, while content and detail stay real.
- `diffusion_smooth`: the missing fine detail of decoded diffusion images (Ricker et al. 2022,
  Corvi et al. 2023): everything above a cutoff near a quarter of the sampling rate is removed
  and only a synthetic grain at the image's own noise level is put back there, so flat areas look
  natural but the spectrum falls off at high frequencies.
- `inpaint_local`: a local inpainting: an elliptical region is re-synthesised at half resolution,
  smoothed, upsampled on the image's pixel grid and blended in; every pixel outside the returned
  mask is the photograph's own.

Every simulator draws its strength from a range, so no expert can learn a constant.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import fft
from scipy.ndimage import convolve1d, gaussian_filter
from skimage.draw import ellipse
from skimage.transform import downscale_local_mean

Simulator = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray | None]]

# Butterworth order of the diffusion decoder's roll-off: sharp, unlike the gradual fall-off of optics.
DIFFUSION_ROLL_OFF_ORDER = 8


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _area_downsample(image: np.ndarray) -> np.ndarray:
    """2x2 means; an odd last row or column is dropped."""
    height, width = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    return downscale_local_mean(image[:height, :width], (2, 2, 1))


def _pad_to(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Edge-pad the rows and columns an odd-sized image lost to a 2x2 downsampling."""
    return np.pad(image, ((0, shape[0] - image.shape[0]), (0, shape[1] - image.shape[1]), (0, 0)), "edge")


def _transposed_upsample(low: np.ndarray, tap: float) -> np.ndarray:
    """Zero insertion then the separable kernel [tap, 1, tap], as a stride-2 transposed conv does.

    tap = 0.5 is exact bilinear interpolation; any other tap gives odd and even output pixels
    different gains, the checkerboard."""
    zero_inserted = np.zeros((2 * low.shape[0], 2 * low.shape[1], low.shape[2]))
    zero_inserted[::2, ::2] = low
    kernel = np.array([tap, 1.0, tap])
    return convolve1d(convolve1d(zero_inserted, kernel, axis=0, mode="mirror"), kernel, axis=1, mode="mirror")


def _checkerboard(image: np.ndarray, tap: float) -> np.ndarray:
    """What a transposed conv with `tap` adds to the image, compared with exact bilinear upsampling."""
    low = _area_downsample(image)
    return _pad_to(_transposed_upsample(low, tap) - _transposed_upsample(low, 0.5), image.shape)


def gan_upsample(real: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, None]:
    """The last two upsampling stages of a generator, each a transposed conv with uneven taps.

    The final stage leaves a period-2 gain pattern (Nyquist peaks); the stage before it works at
    half resolution, so its period-2 pattern becomes period 4 here (half-Nyquist peaks)."""

    def uneven_tap() -> float:
        return 0.5 + rng.choice([-1.0, 1.0]) * rng.uniform(0.01, 0.03)

    image = real.astype(np.float64)
    final_stage = _checkerboard(image, uneven_tap())
    earlier_stage = _transposed_upsample(_checkerboard(_area_downsample(image), uneven_tap()), 0.5)
    return _to_uint8(image + final_stage + _pad_to(earlier_stage, image.shape)), None


def _split_band(image: np.ndarray, cutoff: float, order: int) -> tuple[np.ndarray, np.ndarray]:
    """(below, above) a Butterworth cutoff in cycles per pixel, over the first two axes.

    Filtering in the DCT domain mirrors the image at its borders instead of wrapping it, so no
    ringing comes in from the opposite edge (and it is far faster than skimage's butterworth)."""
    frequency_rows = np.arange(image.shape[0]) / (2 * image.shape[0])
    frequency_cols = np.arange(image.shape[1]) / (2 * image.shape[1])
    radius = np.hypot(frequency_rows[:, None], frequency_cols[None, :])
    gain = 1.0 / np.sqrt(1.0 + (radius / cutoff) ** (2 * order))
    gain = gain.reshape(gain.shape + (1,) * (image.ndim - 2))
    below = fft.idctn(fft.dctn(image, axes=(0, 1), norm="ortho") * gain, axes=(0, 1), norm="ortho")
    return below, image - below


def diffusion_smooth(real: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, None]:
    """Fine detail above a cutoff replaced by synthetic grain at the level of the image's flat areas."""
    image = real.astype(np.float64)
    cutoff = rng.uniform(0.22, 0.26)
    below, above = _split_band(image, cutoff, DIFFUSION_ROLL_OFF_ORDER)
    # The removed band's energy in the image's flattest areas: its sensor noise, not its edges.
    local_energy = gaussian_filter(above.mean(axis=2) ** 2, sigma=4.0)
    noise_level = np.sqrt(np.quantile(local_energy, rng.uniform(0.2, 0.3)))
    _, grain = _split_band(rng.standard_normal(image.shape[:2]), cutoff, DIFFUSION_ROLL_OFF_ORDER)
    grain *= rng.uniform(0.9, 1.1) * noise_level / grain.std()
    return _to_uint8(below + grain[..., None]), None


def _random_ellipse_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    height, width = shape
    mask = np.zeros(shape, dtype=bool)
    rows, cols = ellipse(
        r=rng.uniform(0.3, 0.7) * height,
        c=rng.uniform(0.3, 0.7) * width,
        r_radius=rng.uniform(0.1, 0.2) * height,
        c_radius=rng.uniform(0.1, 0.2) * width,
        shape=shape,
        rotation=rng.uniform(-np.pi, np.pi),
    )
    mask[rows, cols] = True
    return mask


def inpaint_local(real: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An elliptical region re-synthesised at half resolution, smoothed, and upsampled by pixel
    repetition on the image's own grid, as an inpainting model working at a lower resolution does.

    The blend weight fades in from the mask's border but is zero outside it, so the photograph's
    own pixels are untouched there."""
    image = real.astype(np.float64)
    mask = _random_ellipse_mask(real.shape[:2], rng)
    blur = rng.uniform(0.3, 1.2)
    half_resolution = gaussian_filter(_area_downsample(image), sigma=(blur, blur, 0))
    resynthesised = _pad_to(half_resolution.repeat(2, axis=0).repeat(2, axis=1), image.shape)
    weight = (gaussian_filter(mask.astype(np.float64), sigma=2.0) * mask)[..., None]
    blended = image * (1.0 - weight) + resynthesised * weight
    return np.where(mask[..., None], _to_uint8(blended), real), mask


SIMULATORS: dict[str, Simulator] = {
    "gan_upsample": gan_upsample,
    "diffusion_smooth": diffusion_smooth,
    "inpaint_local": inpaint_local,
}
