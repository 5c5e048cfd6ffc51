"""Judging a router as a sceptical user would: the routed system next to every single expert, a
random router, all experts merged and the oracle — accuracy, AUC, calibration (ECE), cost per
image, the share of the oracle gap closed, per subject and per generator — and its cost–accuracy
curve with AIQ, ROC curves and reliability diagram."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.curves import (
    area_under_cost_curve,
    cost_accuracy_curve,
    oracle_point,
    plot_cost_accuracy,
    single_expert_points,
)
from benchmarks.metrics import accuracy_at_coverage, correctness, routing_comparison, system_scores
from benchmarks.plots import plot_reliability, plot_roc

CURVE_PNG = "cost_accuracy.png"
ROC_PNG = "roc.png"
RELIABILITY_PNG = "reliability.png"
SIDE_COLUMN = "router_side"  # the breakdown that keeps a router's training samples apart from the rest
HELD_OUT, TRAINED_ON = "held out", "trained on"


@dataclass
class RoutingEvaluation:
    systems: pd.DataFrame  # one row per system: accuracy, auc, ece, cost (+ oracle_gap_closed for "routed")
    breakdown: dict[str, pd.DataFrame]  # group column -> accuracy per group (rows) and system (columns), n
    curve: pd.DataFrame  # lambda, accuracy, cost, ...
    aiq: float
    abstained: float  # share of images the router abstained on
    n_images: int
    experts: list[str]
    costs: np.ndarray
    right: np.ndarray  # (n, k): expert j right on image i
    scores: pd.DataFrame  # (n, systems): each system's p_fake per image, a failed expert's confidently wrong
    is_fake: np.ndarray  # (n,)
    # Samples whose images the router was trained on: left out of these figures, or judged in them.
    training_samples_left_out: int = 0
    training_samples_judged: int = 0

    def headline(self) -> dict[str, float]:
        routed = self.systems.loc["routed"]
        return {
            "n_images": self.n_images, "accuracy": float(routed["accuracy"]), "auc": float(routed["auc"]),
            "cost": float(routed["cost"]), "oracle_gap_closed": float(routed["oracle_gap_closed"]),
            "best_single": self.best_single, "best_single_accuracy": float(self.systems.loc[self.best_single, "accuracy"]),
            "oracle_accuracy": float(self.systems.loc["oracle", "accuracy"]), "aiq": self.aiq,
            "abstained": self.abstained, "training_samples_left_out": self.training_samples_left_out,
            "training_samples_judged": self.training_samples_judged,
        }

    @property
    def best_single(self) -> str:
        experts = [name for name in self.systems.index if name not in SYSTEMS_BESIDE_EXPERTS]
        return str(self.systems.loc[experts, "accuracy"].idxmax())

    @property
    def coverage(self) -> pd.DataFrame:
        """Accuracy where each system is surest (rows: systems; columns: the share answered)."""
        return pd.DataFrame(
            {name: accuracy_at_coverage(self.scores[name].to_numpy(), self.is_fake) for name in self.scores.columns}
        ).T

    def labelled_scores(self) -> dict[str, np.ndarray]:
        """Each system's p_fake per image under the name a reader understands."""
        return {SYSTEM_LABELS.get(name, name): self.scores[name].to_numpy() for name in self.scores.columns}


SYSTEMS_BESIDE_EXPERTS = ("random", "merged", "routed", "oracle")
SYSTEM_LABELS = {
    "random": "random router",
    "merged": "all experts merged",
    "routed": "routed",
    "oracle": "oracle (bound)",
}


def evaluate_routing(
    p_fake: np.ndarray,
    is_fake: np.ndarray,
    experts: Sequence[str],
    costs: Sequence[float],
    p_correct_pred: np.ndarray,
    chosen: np.ndarray,
    groups: Mapping[str, Sequence[str]],
    abstained: np.ndarray | None = None,
    seed: int = 0,
) -> RoutingEvaluation:
    """p_fake (n, k): every expert's calibrated P(fake) (NaN = the expert failed, counted wrong);
    p_correct_pred (n, k): the router's predictions; chosen (n,): the router's choice."""
    n = len(is_fake)
    costs = np.asarray(costs, dtype=float)
    failed = np.isnan(p_fake)
    # A failed expert answered nothing: it counts as confidently wrong.
    answered = np.where(failed, np.where(np.asarray(is_fake, bool)[:, None], 0.0, 1.0), p_fake)
    right = correctness(p_fake, is_fake)
    order = [*experts, *SYSTEMS_BESIDE_EXPERTS]
    scores = system_scores(answered, is_fake, experts, answered[np.arange(n), chosen], seed=seed)
    scores["merged"] = np.nanmean(np.where(failed, np.nan, p_fake), axis=1)
    scores = pd.DataFrame(scores)[order]
    rows = routing_comparison(scores, is_fake, experts)
    for j, name in enumerate(experts):
        rows[name]["cost"] = float(costs[j])
    rows["random"]["cost"] = float(costs.mean())
    rows["merged"]["cost"] = float(costs.sum())
    rows["routed"]["cost"] = float(costs[chosen].mean())
    rows["oracle"]["cost"] = oracle_point(right, costs)[0]
    systems = pd.DataFrame.from_dict(rows, orient="index").loc[order]

    right_by_system = pd.DataFrame(correctness(scores.to_numpy(), is_fake), columns=order)
    breakdown = {}
    for column, values in groups.items():
        values = np.asarray(values, dtype=str)
        table = {}
        for group in sorted(set(values)):
            members = values == group
            table[group] = {**right_by_system[members].mean().to_dict(), "n": int(members.sum())}
        breakdown[column] = pd.DataFrame.from_dict(table, orient="index")

    curve = cost_accuracy_curve(p_correct_pred, right, costs)
    return RoutingEvaluation(
        systems=systems,
        breakdown=breakdown,
        curve=curve,
        aiq=area_under_cost_curve(curve["cost"].to_numpy(), curve["accuracy"].to_numpy()),
        abstained=float(np.mean(abstained)) if abstained is not None and n else 0.0,
        n_images=n,
        experts=list(experts),
        costs=costs,
        right=right,
        scores=scores,
        is_fake=np.asarray(is_fake, dtype=bool),
    )


def write_evaluation(evaluation: RoutingEvaluation, out_dir: Path, title: str) -> dict[str, Path]:
    """Tables as CSV, the headline as JSON, and as PNGs the cost–accuracy curve, the ROC curves and
    the reliability diagram; returns the PNGs by kind ("cost_accuracy", "roc", "reliability")."""
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluation.systems.to_csv(out_dir / "systems.csv", index_label="system")
    for column, table in evaluation.breakdown.items():
        table.to_csv(out_dir / f"by_{column}.csv", index_label=column)
    evaluation.curve.to_csv(out_dir / "curve.csv", index=False)
    evaluation.coverage.to_csv(out_dir / "coverage.csv", index_label="system")
    (out_dir / "evaluation.json").write_text(json.dumps(evaluation.headline(), indent=2))
    systems = evaluation.systems
    scores = evaluation.labelled_scores()
    return {
        "cost_accuracy": plot_cost_accuracy(
            evaluation.curve,
            single_expert_points(evaluation.right, evaluation.costs, evaluation.experts),
            oracle_point(evaluation.right, evaluation.costs),
            out_dir / CURVE_PNG,
            title=f"{title} (AIQ {evaluation.aiq:.3f})",
            extra_points={
                SYSTEM_LABELS[name]: (float(systems.loc[name, "cost"]), float(systems.loc[name, "accuracy"]))
                for name in ("random", "merged")
            },
        ),
        "roc": plot_roc(scores, evaluation.is_fake, out_dir / ROC_PNG, f"{title}: ROC"),
        "reliability": plot_reliability(scores, evaluation.is_fake, out_dir / RELIABILITY_PNG, f"{title}: calibration"),
    }
