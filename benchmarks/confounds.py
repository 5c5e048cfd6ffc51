"""Confounds: properties of an image that tell a wild set's classes apart without being evidence of
generation, and AUC with one of them held equal.

Sharpness is the one that matters on the wild sets measured so far. With size, codec and metadata
matched (coe wild's matched protocol), how blurry the pixels are still separates the classes: on
wild-dev2 (diffusion outputs against ImageNet and test-set photos) "blurrier is fake" alone has AUC
0.73, on wild-dev (128 px GAN faces against 128 px crops of 512 px CelebA-HQ faces) 0.08 — the
crops of the larger real faces are the blurrier ones. A detector that learnt "blur = fake" (an
autoencoder's reconstructions are blurrier than its inputs) therefore scores well on one set and
below chance on the other. `matched_pair_auc` asks the question that survives: over the pairs of
one fake and one real of (nearly) the same sharpness, how often does the fake score higher.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

# |log sharpness| difference within which a fake and a real count as equally sharp (about 10 %).
SHARPNESS_CALIPER = 0.1
# Rec. 601 luma weights.
LUMA = np.array([0.299, 0.587, 0.114])
PAIR_BLOCK = 256  # fakes compared with every real at a time: memory stays O(block x reals)


def sharpness(pixels: np.ndarray) -> float:
    """Mean absolute high-pass of the luminance (0..255): |Y - Y blurred with a Gaussian of sigma 1|
    averaged over the image. Larger is sharper; a flat image has 0."""
    pixels = np.asarray(pixels)
    luma = pixels.astype(np.float32) @ LUMA.astype(np.float32) if pixels.ndim == 3 else pixels.astype(np.float32)
    return float(np.abs(luma - gaussian_filter(luma, sigma=1.0, mode="reflect")).mean())


def log_sharpness(sharpness_values: np.ndarray) -> np.ndarray:
    """The scale pairs are matched on (a flat image's 0 held at 1e-6); NaN stays NaN."""
    return np.log(np.maximum(np.asarray(sharpness_values, dtype=float), 1e-6))


def blur_says_fake(sharpness_values: np.ndarray) -> np.ndarray:
    """The score of the baseline "blurrier is fake": larger for blurrier images."""
    return -log_sharpness(sharpness_values)


def matched_pair_auc(
    scores: np.ndarray, is_fake: np.ndarray, covariate: np.ndarray, caliper: float
) -> tuple[float, int]:
    """(AUC, pairs) over the fake-real pairs whose `covariate` differs by at most `caliper`: the share
    of those pairs in which the fake has the higher score, ties counting half. Over every pair it is
    the ROC AUC; NaN with no pair (or NaN scores) within the caliper."""
    scores, covariate = np.asarray(scores, dtype=float), np.asarray(covariate, dtype=float)
    is_fake = np.asarray(is_fake, dtype=bool)
    if not scores.shape == covariate.shape == is_fake.shape:
        raise ValueError(f"scores {scores.shape}, is_fake {is_fake.shape} and covariate {covariate.shape} differ")
    known = ~np.isnan(scores) & ~np.isnan(covariate)
    fake_scores, fake_covariate = scores[known & is_fake], covariate[known & is_fake]
    real_scores, real_covariate = scores[known & ~is_fake], covariate[known & ~is_fake]
    concordant, pairs = 0.0, 0
    for start in range(0, len(fake_scores), PAIR_BLOCK):
        block = slice(start, start + PAIR_BLOCK)
        close = np.abs(fake_covariate[block, None] - real_covariate[None, :]) <= caliper
        higher = np.sign(fake_scores[block, None] - real_scores[None, :])
        concordant += float(((higher + 1) / 2)[close].sum())
        pairs += int(close.sum())
    return (concordant / pairs if pairs else float("nan")), pairs
