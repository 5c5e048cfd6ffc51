"""Metrics for detectors and for routed systems, as the field reports them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score


def detection_scores(p_fake: np.ndarray, is_fake: np.ndarray) -> dict[str, float]:
    """Accuracy at 0.5 and ROC-AUC (NaN when only one class is present)."""
    p_fake, is_fake = np.asarray(p_fake, dtype=float), np.asarray(is_fake, dtype=int)
    accuracy = float(((p_fake >= 0.5) == is_fake).mean()) if len(is_fake) else float("nan")
    auc = float(roc_auc_score(is_fake, p_fake)) if len(np.unique(is_fake)) == 2 else float("nan")
    return {"accuracy": accuracy, "auc": auc}


def correctness(p_fake: np.ndarray, is_fake: np.ndarray) -> np.ndarray:
    """(n, k) booleans: expert j's verdict at 0.5 on image i is right."""
    return (np.asarray(p_fake) >= 0.5) == np.asarray(is_fake, dtype=bool)[:, None]


def oracle_p_fake(p_fake: np.ndarray, is_fake: np.ndarray) -> np.ndarray:
    """What a perfect router would output: for each image, the expert most confidently right."""
    return np.where(np.asarray(is_fake, dtype=bool), p_fake.max(axis=1), p_fake.min(axis=1))


def routing_comparison(
    p_fake: np.ndarray,
    is_fake: np.ndarray,
    experts: Sequence[str],
    routed_p_fake: np.ndarray,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """The routed system next to every single expert, a random router, and the oracle.

    p_fake (n, k): every expert's calibrated p_fake; routed_p_fake (n,): the routed system's."""
    rows = {name: detection_scores(p_fake[:, j], is_fake) for j, name in enumerate(experts)}
    random_choice = np.random.default_rng(seed).integers(0, len(experts), len(is_fake))
    rows["random"] = detection_scores(p_fake[np.arange(len(is_fake)), random_choice], is_fake)
    rows["routed"] = detection_scores(routed_p_fake, is_fake)
    rows["oracle"] = detection_scores(oracle_p_fake(p_fake, is_fake), is_fake)
    best_single = max(rows[name]["accuracy"] for name in experts)
    gap = rows["oracle"]["accuracy"] - best_single
    rows["routed"]["oracle_gap_closed"] = (
        (rows["routed"]["accuracy"] - best_single) / gap if gap > 0 else float("nan")
    )
    return rows
