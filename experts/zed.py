"""ZED-style expert (Cozzolino et al. ECCV 2024, "Zero-Shot Detection of AI-Generated Images"): a
lossless-coding model of real photos, and how much an image surprises it. It learns from real
images only, so no generator, real or simulated, shapes what it looks for.

The coder is multi-resolution, as ZED's: the grey image is average-pooled 2x2 again and again, and
each level is coded given the next coarser one. A pixel's prediction is linear in its coarse 3x3
neighbourhood and in the pixels of its own 2x2 block coded before it (three of the four; the
fourth follows from the block's mean); its distribution is a discrete Laplace whose scale depends
on the local activity. Per level l, the statistic is ZED's coding-cost gap
D_l = mean(NLL - H) in bits per pixel: the actual cost of the image minus the cost the model
expected. Real photos like the training ones sit near 0; an image that is more predictable than
the model expects (smooth, noise-free detail) sits below.

This coder is far smaller than ZED's (a linear predictor and 16 scales per level and position
instead of a deep network trained on large photo collections), so which side of the real photos
a generator falls on is measured, not assumed: on wild-dev2 (matched 256 px JPEG) the level-0
gap of generator outputs is lower than that of camera photos (AUC 0.74), while CelebA-HQ, whose
"real" faces were themselves made by neural super-resolution, sits lower than GAN faces.

Real images only (the default): p_fake is one minus the conformal p-value of the level-0 gap
among the real training images (held out from the coder that scored them), so a real photo's
p_fake is uniform on [0, 1] and only the tail is evidence; the card's threshold (0.95) is a 5%
false-positive rate on photos like the training ones, and the router's calibration turns the
score into a probability. With `use_fakes: true` and fakes in the training data, a logistic
regression over every level's gap learns which direction and level separate them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import laplace
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from experts.base import ExpertNotTrainedError, TrainableExpert, TrainingDataError, register_expert
from experts.classic import META_FILE, MaxSide, read_trained_meta, trained_meta
from experts.pixels import centre_crop, grey_pixels
from experts.weights import WeightsFormatError

MODEL_FILE = "coder.npz"
HEAD_FILE = "head.joblib"
# The block's pixels coded in this order; the fourth is (almost) fixed by the block's mean.
CODED_POSITIONS = ((0, 0), (0, 1), (1, 0))
COARSE_NEIGHBOURS = 8
N_CONTEXT = COARSE_NEIGHBOURS + len(CODED_POSITIONS) - 1
ACTIVITY_BINS = 16
# Scales below uint8 quantisation would make flat (saturated) regions infinitely surprising.
MIN_SCALE = 0.15
# Fractional offsets of the predicted mean at which the entropy is tabulated.
OFFSET_STEPS = 32
ENTROPY_SUPPORT = np.arange(-300, 301)
FOLDS = 2


class ZedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_side: MaxSide = 512
    levels: int = Field(default=3, ge=1, le=5, description="resolution levels coded, the finest first")
    use_fakes: bool = Field(
        default=False,
        description="false: learn from the real training images only (fakes are ignored); true: also fit a "
        "logistic regression over the levels' gaps on real and fake training images",
    )


def integer_grey(image: np.ndarray, max_side: int, levels: int) -> np.ndarray:
    grey = centre_crop(grey_pixels(image), max_side, multiple=2**levels)
    return np.rint(grey)


def pooled(fine: np.ndarray) -> np.ndarray:
    """The next coarser level: each 2x2 block's mean, rounded, so every level holds integers."""
    height, width = fine.shape
    return np.rint(fine.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3)))


def block_contexts(fine: np.ndarray, coarse: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each coded position of the 2x2 blocks: (target, context, activity), one row per block.
    Targets and context are relative to the block's coarse value; unknown context is zero."""
    padded = np.pad(coarse, 1, mode="edge")
    rows, cols = coarse.shape
    offsets = [(-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)]
    neighbours = np.stack([padded[1 + dy : 1 + dy + rows, 1 + dx : 1 + dx + cols] - coarse for dy, dx in offsets], -1)
    activity = np.abs(neighbours).sum(axis=-1)
    known: list[np.ndarray] = []
    out = []
    for dy, dx in CODED_POSITIONS:
        target = fine[dy::2, dx::2] - coarse
        context = np.zeros((rows, cols, N_CONTEXT))
        context[..., :COARSE_NEIGHBOURS] = neighbours
        for k, value in enumerate(known):
            context[..., COARSE_NEIGHBOURS + k] = value
        # A coded neighbour that strays from the block's mean says the block is busy.
        local = activity + 2.0 * sum((np.abs(value) for value in known), np.zeros_like(activity))
        out.append((target.ravel(), context.reshape(-1, N_CONTEXT), local.ravel()))
        known.append(target)
    return out


def pyramid(grey: np.ndarray, levels: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fine, coarse) pairs, the finest level first."""
    pairs = []
    for _ in range(levels):
        coarse = pooled(grey)
        pairs.append((grey, coarse))
        grey = coarse
    return pairs


def discrete_laplace(target: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """P(target) for integer targets under a Laplace(mean, scale) discretised to integers."""
    upper = laplace.cdf(target - mean + 0.5, scale=scale)
    lower = laplace.cdf(target - mean - 0.5, scale=scale)
    return np.maximum(upper - lower, 1e-12)


def entropy_table(scales: np.ndarray) -> np.ndarray:
    """Entropy in bits of the discretised Laplace for each scale (rows) and fractional offset of its
    mean (columns, -0.5 .. 0.5 in OFFSET_STEPS steps): the expected coding cost of one pixel."""
    offsets = np.linspace(-0.5, 0.5, OFFSET_STEPS + 1)
    table = np.empty((len(scales), len(offsets)))
    for i, scale in enumerate(scales):
        p = discrete_laplace(ENTROPY_SUPPORT[None, :], offsets[:, None], scale)
        p /= p.sum(axis=1, keepdims=True)
        table[i] = -(p * np.log2(p)).sum(axis=1)
    return table


@dataclass
class Coder:
    """One linear predictor and one scale per activity bin, per (level, coded position)."""

    coef: np.ndarray  # (levels, positions, N_CONTEXT)
    intercept: np.ndarray  # (levels, positions)
    activity_edges: np.ndarray  # (levels, positions, ACTIVITY_BINS - 1)
    scales: np.ndarray  # (levels, positions, ACTIVITY_BINS)

    def __post_init__(self):
        self.entropy = np.stack([[entropy_table(s) for s in level] for level in self.scales])

    @property
    def levels(self) -> int:
        return len(self.coef)

    @classmethod
    def fit(cls, greys: Sequence[np.ndarray], levels: int) -> Coder:
        shape = (levels, len(CODED_POSITIONS))
        coef, intercept = np.zeros((*shape, N_CONTEXT)), np.zeros(shape)
        edges, scales = np.zeros((*shape, ACTIVITY_BINS - 1)), np.zeros((*shape, ACTIVITY_BINS))
        per_image = [pyramid(grey, levels) for grey in greys]
        for level in range(levels):
            contexts = [block_contexts(*pairs[level]) for pairs in per_image]
            for position in range(len(CODED_POSITIONS)):
                target = np.concatenate([c[position][0] for c in contexts])
                context = np.concatenate([c[position][1] for c in contexts])
                activity = np.concatenate([c[position][2] for c in contexts])
                predictor = LinearRegression().fit(context, target)
                coef[level, position], intercept[level, position] = predictor.coef_, predictor.intercept_
                residual = np.abs(target - predictor.predict(context))
                edges[level, position] = np.quantile(activity, np.linspace(0, 1, ACTIVITY_BINS + 1)[1:-1])
                bins = np.digitize(activity, edges[level, position])
                # The mean absolute residual is the maximum-likelihood Laplace scale of each bin.
                sums = np.bincount(bins, residual, ACTIVITY_BINS)
                counts = np.maximum(np.bincount(bins, minlength=ACTIVITY_BINS), 1)
                scales[level, position] = np.maximum(sums / counts, MIN_SCALE)
        return cls(coef, intercept, edges, scales)

    def costs(self, grey: np.ndarray) -> np.ndarray:
        """(levels, 2): the actual coding cost (NLL) and the expected one (entropy), bits per pixel."""
        out = np.zeros((self.levels, 2))
        for level, (fine, coarse) in enumerate(pyramid(grey, self.levels)):
            for position, (target, context, activity) in enumerate(block_contexts(fine, coarse)):
                mean = context @ self.coef[level, position] + self.intercept[level, position]
                bins = np.digitize(activity, self.activity_edges[level, position])
                nll = -np.log2(discrete_laplace(target, mean, self.scales[level, position][bins]))
                offset = np.rint((mean - np.rint(mean) + 0.5) * OFFSET_STEPS).astype(int)
                out[level, 0] += nll.mean()
                out[level, 1] += self.entropy[level, position][bins, np.clip(offset, 0, OFFSET_STEPS)].mean()
        return out / len(CODED_POSITIONS)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef, "intercept": self.intercept, "activity_edges": self.activity_edges,
                "scales": self.scales}


def gap_features(costs: np.ndarray) -> np.ndarray:
    """Every level's gap D_l = NLL - H, then level 0's actual and expected costs."""
    return np.concatenate([costs[:, 0] - costs[:, 1], costs[0]])


@register_expert("zed")
class ZedExpert(TrainableExpert):
    Params = ZedParams

    def __init__(self, card):
        super().__init__(card)
        self.coder: Coder | None = None
        self.real_gaps: np.ndarray | None = None  # level-0 gaps of real images the coder never saw, sorted
        self.head: Pipeline | None = None

    @property
    def needs_fakes(self) -> bool:
        return self.params.use_fakes

    def grey(self, image: np.ndarray) -> np.ndarray:
        return integer_grey(image, self.params.max_side, self.params.levels)

    def features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """gap_features of each image under the trained coder."""
        if self.coder is None:
            raise ExpertNotTrainedError(
                f"expert {self.name!r} has no trained weights: run `coe experts train {self.name} --data DIR` "
                "(a real/ folder is enough)"
            )
        return np.stack([gap_features(self.coder.costs(self.grey(image))) for image in images])

    def fit(self, images: Sequence[np.ndarray], labels: np.ndarray) -> ZedExpert:
        labels = np.asarray(labels, dtype=int)
        real = [self.grey(image) for image, label in zip(images, labels, strict=True) if label == 0]
        if len(real) < 2 * FOLDS:
            raise TrainingDataError(
                f"expert {self.name!r} needs at least {2 * FOLDS} real training images, got {len(real)}"
            )
        if self.params.use_fakes and set(np.unique(labels)) != {0, 1}:
            raise TrainingDataError(f"expert {self.name!r} has use_fakes: true and needs real (0) and fake (1) images")
        # Each real image is scored by a coder fitted on the other fold, so the reference gaps (and
        # the head's real rows) are what an unseen real photo gives, not the coder's own training set.
        fold = np.arange(len(real)) % FOLDS
        held_out = np.zeros((len(real), 2 + self.params.levels))
        for k in range(FOLDS):
            coder = Coder.fit([g for g, f in zip(real, fold, strict=True) if f != k], self.params.levels)
            for i in np.flatnonzero(fold == k):
                held_out[i] = gap_features(coder.costs(real[i]))
        self.coder = Coder.fit(real, self.params.levels)
        self.real_gaps = np.sort(held_out[:, 0])
        metrics: dict = {
            "real_gap_quantiles": dict(zip(("5%", "50%", "95%"), np.quantile(self.real_gaps, [0.05, 0.5, 0.95]).tolist(),
                                           strict=True)),
        }
        self.head = None
        used = labels == 0
        if self.params.use_fakes:
            fakes = [image for image, label in zip(images, labels, strict=True) if label == 1]
            x = np.concatenate([held_out, self.features(fakes)])
            y = np.concatenate([np.zeros(len(real), int), np.ones(len(fakes), int)])
            self.head = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)).fit(x, y)
            metrics["training_auc"] = float(roc_auc_score(y, self.head.predict_proba(x)[:, 1]))
            used = np.ones(len(labels), dtype=bool)
        chosen = [image for image, keep in zip(images, used, strict=True) if keep]
        self.meta = trained_meta(self, chosen, labels[used], metrics)
        return self

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        features = self.features(images)
        if self.head is not None:
            return self.head.predict_proba(features)[:, 1]
        # Conformal p-value: the share of held-out real images at least as unsurprising.
        lower_or_equal = np.searchsorted(self.real_gaps, features[:, 0], side="right")
        return 1.0 - (1.0 + lower_or_equal) / (1.0 + len(self.real_gaps))

    def save(self, folder: Path) -> None:
        if self.coder is None:
            raise ExpertNotTrainedError(f"expert {self.name!r} is not trained; nothing to save")
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / MODEL_FILE, real_gaps=self.real_gaps, **self.coder.arrays())
        if self.head is not None:
            joblib.dump(self.head, folder / HEAD_FILE)
        (folder / META_FILE).write_text(json.dumps(self.meta, indent=2))

    def load(self, folder: Path) -> ZedExpert:
        meta = read_trained_meta(self, folder, MODEL_FILE, hint=" (a real/ folder is enough)")
        with np.load(folder / MODEL_FILE, allow_pickle=False) as arrays:
            self.real_gaps = arrays["real_gaps"]
            self.coder = Coder(arrays["coef"], arrays["intercept"], arrays["activity_edges"], arrays["scales"])
        if self.coder.levels != self.params.levels:
            raise WeightsFormatError(
                f"{folder} codes {self.coder.levels} levels but the card says levels: {self.params.levels}; retrain it"
            )
        use_fakes = meta.get("params", {}).get("use_fakes", False)
        self.head = joblib.load(folder / HEAD_FILE) if use_fakes else None
        self.meta = meta
        return self
