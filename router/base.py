"""What every router shares: predicted P(correct) per expert, turned into a choice by the utility
P(correct) - lambda * relative cost, with abstention when even the best expert is unlikely right."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator

from coe.core.records import RankedExpert


def relative_costs(costs: np.ndarray) -> np.ndarray:
    """Costs scaled so the most expensive expert costs 1: lambda then reads in P(correct) units."""
    return costs / costs.max() if costs.max() > 0 else costs


class CostAwareRouter(BaseEstimator):
    """Subclasses set `experts_` and `costs_` in `fit` and implement `predict_correct`."""

    cost_weight: float
    abstain_below: float | None

    def predict_correct(self, features: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def relative_costs(self) -> np.ndarray:
        return relative_costs(self.costs_)

    def utilities(self, p_correct: np.ndarray) -> np.ndarray:
        return p_correct - self.cost_weight * self.relative_costs()

    def choose(self, features: np.ndarray) -> np.ndarray:
        """Index of the chosen expert for each image (ties go to the earlier expert)."""
        return self.utilities(self.predict_correct(features)).argmax(axis=1)

    def ranked(self, p_correct_row: np.ndarray) -> list[RankedExpert]:
        utility = self.utilities(p_correct_row[None, :])[0]
        return [
            RankedExpert(
                expert=self.experts_[j], p_correct=float(p_correct_row[j]), cost=float(self.costs_[j]),
                utility=float(utility[j]),
            )
            for j in np.argsort(-utility, kind="stable")
        ]

    def abstention(self, best: RankedExpert) -> str | None:
        """Why the router abstains on an image whose best expert is `best`, or None."""
        if self.abstain_below is None or best.p_correct >= self.abstain_below:
            return None
        return f"abstained: best P(correct)={best.p_correct:.2f} < {self.abstain_below:g}"
