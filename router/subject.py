"""Subject-level routing (Bench-CoE): classify each image's subject from its features, then send
it to the expert that did best on that subject in the benchmark outcomes.

Unlike Bench-CoE's hand-written table, the subject -> expert table is derived from the outcomes:
per subject, each expert's accuracy minus lambda * relative cost; subjects with fewer than
`min_support` training images fall back to the best expert overall."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from sklearn.base import clone

from coe.core.records import RoutingDecision
from router.base import CostAwareRouter, register_router
from router.query import correctness_model


@register_router("subject")
class SubjectRouter(CostAwareRouter):
    def __init__(
        self,
        model: Literal["logreg", "lightgbm"] = "logreg",
        cost_weight: float = 0.0,
        abstain_below: float | None = None,
        novelty_quantile: float | None = 0.99,
        novelty_columns: int | None = None,
        min_support: int = 20,
        random_state: int = 0,
    ):
        self.model = model
        self.cost_weight = cost_weight
        self.abstain_below = abstain_below
        self.novelty_quantile = novelty_quantile
        self.novelty_columns = novelty_columns
        self.min_support = min_support
        self.random_state = random_state

    def fit(
        self, features: np.ndarray, correct: np.ndarray, experts: Sequence[str], costs: Sequence[float],
        subjects: Sequence[str] | None = None,
    ) -> SubjectRouter:
        """correct (n, k): was expert j right on image i; subjects (n,): each training image's subject."""
        if subjects is None:
            raise ValueError("the subject router learns per subject: fit needs each training image's subject")
        correct = np.asarray(correct, dtype=bool)
        subjects = np.asarray(subjects, dtype=str)
        if correct.shape != (len(features), len(experts)) or len(subjects) != len(features):
            raise ValueError(f"outcomes {correct.shape} do not match {len(features)} images x {len(experts)} experts")
        self.experts_ = list(experts)
        self.costs_ = np.asarray(costs, dtype=float)
        self.subjects_, counts = np.unique(subjects, return_counts=True)
        self.support_ = dict(zip(self.subjects_.tolist(), counts.tolist(), strict=True))
        overall = correct.mean(axis=0)
        # Rows of the table: each subject's accuracy per expert, or the overall accuracy when the
        # subject has too few images to be trusted. The table is the router's P(correct).
        self.table_ = {
            subject: correct[subjects == subject].mean(axis=0) if count >= self.min_support else overall
            for subject, count in self.support_.items()
        }
        if len(self.subjects_) > 1:
            self.classifier_ = clone(correctness_model(self.model, self.random_state)).fit(features, subjects)
        else:
            self.classifier_ = None
        self.fit_novelty(features)
        return self

    def predict_subject(self, features: np.ndarray) -> np.ndarray:
        if self.classifier_ is None:
            return np.full(len(features), self.subjects_[0])
        return np.asarray(self.classifier_.predict(features), dtype=str)

    def predict_correct(self, features: np.ndarray) -> np.ndarray:
        return np.stack([self.table_[subject] for subject in self.predict_subject(features)])

    def table(self) -> dict[str, dict]:
        """subject -> chosen expert, its training accuracy, support and whether it fell back."""
        rows = {}
        for subject, accuracy in self.table_.items():
            best = int(self.utilities(accuracy[None, :])[0].argmax())
            rows[subject] = {
                "expert": self.experts_[best], "accuracy": float(accuracy[best]), "support": self.support_[subject],
                "fallback": self.support_[subject] < self.min_support,
            }
        return rows

    def decide(self, features: np.ndarray, router_id: str) -> list[RoutingDecision]:
        subjects = self.predict_subject(features)
        p_correct = np.stack([self.table_[subject] for subject in subjects])
        novelty = self.novelty(features)
        decisions = []
        for subject, score, abstained in zip(subjects, novelty, self.abstentions(p_correct, novelty), strict=True):
            ranked = self.ranked(self.table_[subject])
            best = ranked[0]
            fallback = self.support_[subject] < self.min_support
            reason = (
                f"subject {subject!r}: {best.expert} was right on {best.p_correct:.0%} of "
                + ("all training images (too few of this subject)" if fallback else "its training images")
            )
            decisions.append(
                RoutingDecision(
                    router_id=router_id, level=self.level, subject=str(subject), ranked=ranked, chosen=best.expert,
                    abstained=abstained is not None, reason=reason if abstained is None else f"{abstained}; {reason}",
                    novelty=None if np.isnan(score) else float(score),
                )
            )
        return decisions
