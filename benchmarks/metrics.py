"""Metrics for detectors and for routed systems, as the field reports them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def detection_scores(p_fake: np.ndarray, is_fake: np.ndarray) -> dict[str, float]:
    """Accuracy at 0.5 and ROC-AUC (NaN when only one class is present)."""
    p_fake, is_fake = np.asarray(p_fake, dtype=float), np.asarray(is_fake, dtype=int)
    accuracy = float(((p_fake >= 0.5) == is_fake).mean()) if len(is_fake) else float("nan")
    auc = float(roc_auc_score(is_fake, p_fake)) if len(np.unique(is_fake)) == 2 else float("nan")
    return {"accuracy": accuracy, "auc": auc}


def correctness(p_fake: np.ndarray, is_fake: np.ndarray) -> np.ndarray:
    """(n, k) booleans: expert j's verdict at 0.5 on image i is right; NaN (the expert failed) is wrong."""
    p_fake = np.asarray(p_fake, dtype=float)
    return ((p_fake >= 0.5) == np.asarray(is_fake, dtype=bool)[:, None]) & ~np.isnan(p_fake)


def oracle_p_fake(p_fake: np.ndarray, is_fake: np.ndarray) -> np.ndarray:
    """What a perfect router would output: for each image, the expert most confidently right."""
    return np.where(np.asarray(is_fake, dtype=bool), p_fake.max(axis=1), p_fake.min(axis=1))


def system_scores(
    p_fake: np.ndarray,
    is_fake: np.ndarray,
    experts: Sequence[str],
    routed_p_fake: np.ndarray,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Each system's p_fake per image: every single expert, a random router, the routed system and
    the oracle. p_fake (n, k): every expert's calibrated p_fake; routed_p_fake (n,): the routed
    system's."""
    scores = {name: p_fake[:, j] for j, name in enumerate(experts)}
    random_choice = np.random.default_rng(seed).integers(0, len(experts), len(is_fake))
    scores["random"] = p_fake[np.arange(len(is_fake)), random_choice]
    scores["routed"] = routed_p_fake
    scores["oracle"] = oracle_p_fake(p_fake, is_fake)
    return scores


def routing_comparison(
    scores: Mapping[str, np.ndarray], is_fake: np.ndarray, experts: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Accuracy, AUC and ECE of every system in `scores` (system -> p_fake per image, with the
    single `experts`, "routed" and "oracle" among them), and the share of the gap between the best
    single expert and the oracle that the routed system closes."""
    rows = {
        name: {**detection_scores(p_fake, is_fake), "ece": expected_calibration_error(p_fake, is_fake)}
        for name, p_fake in scores.items()
    }
    best_single = max(rows[name]["accuracy"] for name in experts)
    gap = rows["oracle"]["accuracy"] - best_single
    rows["routed"]["oracle_gap_closed"] = (
        (rows["routed"]["accuracy"] - best_single) / gap if gap > 0 else float("nan")
    )
    return rows


# Probability of detection at these false-alarm rates, as Corvi et al. (2023) report detectors.
FALSE_ALARM_RATES = {"pd_at_far_10": 0.10, "pd_at_far_5": 0.05, "pd_at_far_1": 0.01}
DETECTOR_METRIC_NAMES = (
    "n",
    "n_real",
    "n_fake",
    "ap",
    "auc",
    "accuracy",
    "accuracy_best",
    "best_threshold",
    "tpr",
    "tnr",
    *FALSE_ALARM_RATES,
    "ece",
)


def expected_calibration_error(p_fake: np.ndarray, is_fake: np.ndarray, n_bins: int = 15) -> float:
    """ECE of p_fake read as the probability that the image is fake.

    n_bins equal-width bins over [0, 1] (1.0 falls in the last one); the gap between the share of
    fakes and the mean p_fake in each bin, weighted by the bin's share of the images. NaN when
    empty."""
    p_fake, is_fake = np.asarray(p_fake, dtype=float), np.asarray(is_fake, dtype=bool)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    if p_fake.shape != is_fake.shape:
        raise ValueError(f"p_fake has shape {p_fake.shape} but is_fake has shape {is_fake.shape}")
    if not len(p_fake):
        return float("nan")
    if np.isnan(p_fake).any() or p_fake.min() < 0 or p_fake.max() > 1:
        raise ValueError("p_fake must be probabilities in [0, 1] to measure calibration")
    bins = np.digitize(p_fake, np.linspace(0, 1, n_bins + 1)[1:-1])
    count = np.bincount(bins, minlength=n_bins)
    occupied = count > 0
    mean_p = np.bincount(bins, weights=p_fake, minlength=n_bins)[occupied] / count[occupied]
    share_fake = np.bincount(bins, weights=is_fake, minlength=n_bins)[occupied] / count[occupied]
    return float(np.sum(count[occupied] / len(p_fake) * np.abs(share_fake - mean_p)))


COVERAGES = (1.0, 0.8, 0.6, 0.4, 0.2)


def accuracy_at_coverage(
    p_fake: np.ndarray, is_fake: np.ndarray, coverages: tuple[float, ...] = COVERAGES
) -> dict[str, float]:
    """Coverage against accuracy: were a system to answer only the share of images it is surest of
    (largest |p_fake - 0.5|), how often would it be right at 0.5. Keys like "80%"; NaN when empty."""
    p_fake, is_fake = np.asarray(p_fake, dtype=float), np.asarray(is_fake, dtype=bool)
    surest = np.argsort(-np.abs(p_fake - 0.5), kind="stable")
    accuracy = {}
    for coverage in coverages:
        kept = surest[: max(1, round(coverage * len(p_fake)))] if len(p_fake) else surest
        accuracy[f"{coverage:.0%}"] = float(((p_fake[kept] >= 0.5) == is_fake[kept]).mean()) if len(kept) else float("nan")
    return accuracy


def _best_threshold(p_fake: np.ndarray, is_fake: np.ndarray, nominal: float) -> tuple[float, float]:
    """(accuracy, threshold) of the most accurate rule `fake if p_fake >= t`, t among the scores and
    one just above the largest (everything real). Ties go to the t nearest the nominal threshold,
    so that a flat optimum reports the usual operating point."""
    candidates = np.append(np.unique(p_fake), np.nextafter(p_fake.max(), np.inf))
    fake_scores, real_scores = np.sort(p_fake[is_fake]), np.sort(p_fake[~is_fake])
    fakes_caught = len(fake_scores) - np.searchsorted(fake_scores, candidates, side="left")
    reals_passed = np.searchsorted(real_scores, candidates, side="left")
    accuracy = (fakes_caught + reals_passed) / len(p_fake)
    best = np.flatnonzero(accuracy == accuracy.max())
    chosen = best[np.argmin(np.abs(candidates[best] - nominal))]
    return float(accuracy[chosen]), float(candidates[chosen])


def detector_metrics(p_fake: np.ndarray, is_fake: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Every detector metric the field reports, fake being the positive class.

    `accuracy`, `tpr` (fake accuracy) and `tnr` (real accuracy) call an image fake when
    p_fake >= threshold. `accuracy_best` and `best_threshold` come from an ORACLE threshold, the
    one that maximises accuracy on these very data: an upper bound that says how much a better
    calibration could give, not an accuracy to expect. `pd_at_far_*` is the probability of
    detection at a 10/5/1 % false-alarm rate (Corvi et al. 2023): the largest TPR on the ROC curve
    whose FPR is at most the target. `ece`: see expected_calibration_error. Metrics that need both
    classes (ap, auc, pd_*) are NaN when one is missing, as are tpr / tnr without fakes / reals;
    empty input gives n = 0 and NaN everywhere else."""
    p_fake, is_fake = np.asarray(p_fake, dtype=float), np.asarray(is_fake, dtype=bool)
    if p_fake.shape != is_fake.shape or p_fake.ndim != 1:
        raise ValueError(
            f"p_fake {p_fake.shape} and is_fake {is_fake.shape} must be two vectors of one length"
        )
    nan = float("nan")
    n_fake = int(is_fake.sum())
    metrics: dict[str, float] = dict.fromkeys(DETECTOR_METRIC_NAMES, nan)
    metrics.update(n=len(is_fake), n_real=len(is_fake) - n_fake, n_fake=n_fake)
    if not len(is_fake):
        return metrics
    called_fake = p_fake >= threshold
    metrics["accuracy"] = float((called_fake == is_fake).mean())
    metrics["accuracy_best"], metrics["best_threshold"] = _best_threshold(p_fake, is_fake, threshold)
    if n_fake:
        metrics["tpr"] = float(called_fake[is_fake].mean())
    if n_fake < len(is_fake):
        metrics["tnr"] = float((~called_fake[~is_fake]).mean())
    metrics["ece"] = expected_calibration_error(p_fake, is_fake)
    if 0 < n_fake < len(is_fake):
        metrics["ap"] = float(average_precision_score(is_fake, p_fake))
        metrics["auc"] = float(roc_auc_score(is_fake, p_fake))
        false_alarm, detection, _ = roc_curve(is_fake, p_fake, drop_intermediate=False)
        for name, rate in FALSE_ALARM_RATES.items():
            # roc_curve starts at (0, 0), so some point always meets the target.
            metrics[name] = float(detection[false_alarm <= rate].max())
    return metrics


def mask_scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """IoU and pixel F1 of two boolean masks of one shape.

    When both masks are empty the prediction is exactly right (nothing to find, nothing claimed),
    so both scores are 1.0. Plain counts rather than sklearn's jaccard/f1 scorers: those validate
    and re-encode every pixel as a label and are ~250x slower on megapixel masks, for the same
    numbers."""
    predicted, truth = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    if predicted.shape != truth.shape:
        raise ValueError(
            f"predicted mask has shape {predicted.shape} but the truth mask has shape {truth.shape}"
        )
    overlap = int(np.logical_and(predicted, truth).sum())
    union = int(np.logical_or(predicted, truth).sum())
    if union == 0:
        return {"iou": 1.0, "f1": 1.0}
    return {"iou": overlap / union, "f1": 2 * overlap / (int(predicted.sum()) + int(truth.sum()))}


def grouped_detector_metrics(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """detector_metrics for each group of `frame` (columns p_fake, label "real"/"fake", and the `by`
    columns): one row per group, the `by` columns first; a missing group value is a group too."""
    missing = [column for column in ("p_fake", "label", *by) if column not in frame.columns]
    if missing:
        raise ValueError(f"the frame has no column(s) {missing}; it has {list(frame.columns)}")
    if not by:
        raise ValueError("group by at least one column")
    unknown_labels = set(frame["label"].unique()) - {"real", "fake"}
    if unknown_labels:
        raise ValueError(f"labels must be 'real' or 'fake', found {sorted(map(str, unknown_labels))}")
    rows = [
        {
            **dict(zip(by, keys, strict=True)),
            **detector_metrics(group["p_fake"].to_numpy(dtype=float), group["label"].eq("fake").to_numpy()),
        }
        for keys, group in frame.groupby(by, sort=True, dropna=False)
    ]
    return pd.DataFrame(rows, columns=[*by, *DETECTOR_METRIC_NAMES])
