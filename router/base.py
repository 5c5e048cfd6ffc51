"""What every router shares: predicted P(correct) per expert, turned into a choice by the utility
P(correct) - lambda * relative cost, with abstention when even the best expert is unlikely right
or when the image is unlike the router's training images (router.novelty); and the registry of
routers by level (`@register_router("query")`), which is how the rest of coe knows the levels.

Every router follows scikit-learn's estimator contract: the constructor stores parameters, and
`fit(features, correct, experts, costs, subjects=None)` returns self (`subjects`, each training
image's content category, is for routers that learn per subject; others ignore it)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator

from coe.core.records import RankedExpert, RoutingDecision
from coe.core.registry import Registry
from router.novelty import NoveltyGate


def relative_costs(costs: np.ndarray) -> np.ndarray:
    """Costs scaled so the most expensive expert costs 1: lambda then reads in P(correct) units."""
    return costs / costs.max() if costs.max() > 0 else costs


class CostAwareRouter(BaseEstimator):
    """Subclasses set `experts_` and `costs_` and call `fit_novelty` in `fit`, and implement
    `predict_correct` and `decide`."""

    level: str  # set by register_router
    cost_weight: float
    abstain_below: float | None
    novelty_quantile: float | None
    novelty_columns: int | None
    random_state: int

    def fit(
        self, features: np.ndarray, correct: np.ndarray, experts: Sequence[str], costs: Sequence[float],
        subjects: Sequence[str] | None = None,
    ) -> CostAwareRouter:
        """features (n, d); correct (n, k) booleans, column j = was expert j right on image i;
        subjects (n,) each image's content category, for routers that learn per subject."""
        raise NotImplementedError

    def predict_correct(self, features: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def decide(self, features: np.ndarray, router_id: str) -> list[RoutingDecision]:
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

    def _watched(self, features: np.ndarray) -> np.ndarray:
        """The columns the novelty gate reads: the last `novelty_columns` (the forensic descriptors), or all."""
        return features[:, -self.novelty_columns :] if self.novelty_columns else features

    def fit_novelty(self, features: np.ndarray) -> None:
        self.novelty_ = (
            None if self.novelty_quantile is None
            else NoveltyGate(quantile=self.novelty_quantile, random_state=self.random_state).fit(self._watched(features))
        )

    def novelty(self, features: np.ndarray) -> np.ndarray:
        """Each image's distance from the training images (NaN everywhere without a gate)."""
        return np.full(len(features), np.nan) if self.novelty_ is None else self.novelty_.score(self._watched(features))

    def abstentions(self, p_correct: np.ndarray, novelty: np.ndarray) -> list[str | None]:
        """Why the router abstains on each image, or None where it answers (the rule `decide` and
        `abstains` both follow)."""
        best = p_correct[np.arange(len(p_correct)), self.utilities(p_correct).argmax(axis=1)]
        reasons = []
        for best_p, score in zip(best, novelty, strict=True):
            why = []
            if self.abstain_below is not None and best_p < self.abstain_below:
                why.append(f"best P(correct)={best_p:.2f} < {self.abstain_below:g}")
            if self.novelty_ is not None and score > self.novelty_.threshold_:
                why.append(
                    f"out of domain: novelty {score:.1f} above {self.novelty_.threshold_:.1f}, which "
                    f"{self.novelty_.quantile * 100:g}% of its training images stay under"
                )
            reasons.append(f"abstained: {'; '.join(why)}" if why else None)
        return reasons

    def abstains(self, features: np.ndarray) -> np.ndarray:
        """Whether the router abstains on each image (what `decide` marks `abstained`)."""
        reasons = self.abstentions(self.predict_correct(features), self.novelty(features))
        return np.array([reason is not None for reason in reasons], dtype=bool)


LEVELS: Registry[type[CostAwareRouter]] = Registry("router level", "level", "router")
register_router = LEVELS.register


def router_levels() -> dict[str, type[CostAwareRouter]]:
    """Every router by level: those of every module in the router package, and any registered elsewhere."""
    return LEVELS.all()


def create_router(level: str, **settings) -> CostAwareRouter:
    """The router of `level`, given those of `settings` its constructor takes (a setting one level
    has, such as the subject router's min_support, is left out of the others)."""
    cls = router_levels().get(level)
    if cls is None:
        raise KeyError(LEVELS.unknown(level))
    accepted = set(cls._get_param_names())
    return cls(**{name: value for name, value in settings.items() if name in accepted})
