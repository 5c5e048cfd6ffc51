"""Query-level routing (Bench-CoE): learn, per expert, P(expert is right | image features) from
benchmark outcomes, then send each image to the expert with the best P(correct) - lambda * cost.

Follows scikit-learn's estimator contract: the constructor stores parameters, `fit` returns self."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from coe.core.records import RoutingDecision
from router.base import CostAwareRouter, register_router


def correctness_model(kind: Literal["logreg", "lightgbm"], random_state: int) -> BaseEstimator:
    if kind == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=3000))
    from lightgbm import LGBMClassifier

    # Small trees and bins: outcome tables are a few thousand rows, and this stays ~1 s on 2 cores.
    return LGBMClassifier(
        n_estimators=150, learning_rate=0.05, num_leaves=15, max_bin=63, min_child_samples=10,
        subsample=0.8, subsample_freq=1, colsample_bytree=0.5, random_state=random_state, verbose=-1,
    )


@register_router("query")
class QueryRouter(CostAwareRouter):
    def __init__(
        self,
        model: Literal["logreg", "lightgbm"] = "logreg",
        cost_weight: float = 0.0,
        abstain_below: float | None = None,
        novelty_quantile: float | None = 0.99,
        novelty_columns: int | None = None,
        random_state: int = 0,
    ):
        self.model = model
        self.cost_weight = cost_weight
        self.abstain_below = abstain_below
        self.novelty_quantile = novelty_quantile
        self.novelty_columns = novelty_columns
        self.random_state = random_state

    def fit(
        self, features: np.ndarray, correct: np.ndarray, experts: Sequence[str], costs: Sequence[float],
        subjects: Sequence[str] | None = None,
    ) -> QueryRouter:
        """features (n, d); correct (n, k) booleans, column j = was expert j right on image i;
        subjects are not used: each image is routed on its own features."""
        correct = np.asarray(correct, dtype=bool)
        if correct.shape != (len(features), len(experts)) or len(costs) != len(experts):
            raise ValueError(
                f"outcomes {correct.shape} do not match {len(features)} images x {len(experts)} experts"
            )
        self.experts_ = list(experts)
        self.costs_ = np.asarray(costs, dtype=float)
        template = correctness_model(self.model, self.random_state)
        # An expert that was always right (or always wrong) gets a constant: a classifier needs two classes.
        self.models_ = [
            clone(template).fit(features, column) if 0 < column.sum() < len(column) else float(column.mean())
            for column in correct.T
        ]
        self.fit_novelty(features)
        return self

    def predict_correct(self, features: np.ndarray) -> np.ndarray:
        columns = [
            np.full(len(features), model) if isinstance(model, float) else model.predict_proba(features)[:, 1]
            for model in self.models_
        ]
        return np.stack(columns, axis=1)

    def decide(self, features: np.ndarray, router_id: str) -> list[RoutingDecision]:
        p_correct = self.predict_correct(features)
        novelty = self.novelty(features)
        decisions = []
        for row_p, score, abstained in zip(p_correct, novelty, self.abstentions(p_correct, novelty), strict=True):
            ranked = self.ranked(row_p)
            best = ranked[0]
            reason = (
                f"{best.expert} has the best predicted P(correct)={best.p_correct:.2f}"
                + (f" - {self.cost_weight:g} x cost" if self.cost_weight else "")
                + (f" (next: {ranked[1].expert} {ranked[1].p_correct:.2f})" if len(ranked) > 1 else "")
            )
            decisions.append(
                RoutingDecision(
                    router_id=router_id, level=self.level, ranked=ranked, chosen=best.expert,
                    abstained=abstained is not None, reason=reason if abstained is None else f"{abstained}; {reason}",
                    novelty=None if np.isnan(score) else float(score),
                )
            )
        return decisions
