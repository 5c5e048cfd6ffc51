"""Platt scaling of an expert's p_fake on held-out outcomes: experts trained on one split are
often over-confident on another, and users read p_fake as a probability."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


class PlattCalibration(BaseModel):
    slope: float = 1.0
    intercept: float = 0.0

    @classmethod
    def fit(cls, p_fake: np.ndarray, is_fake: np.ndarray) -> PlattCalibration:
        is_fake = np.asarray(is_fake, dtype=int)
        if len(np.unique(is_fake)) < 2:
            return cls()  # nothing to learn from one class: leave probabilities as they are
        from sklearn.linear_model import LogisticRegression  # here: applying needs two numbers, not sklearn

        model = LogisticRegression(C=1e4).fit(_logit(p_fake)[:, None], is_fake)
        return cls(slope=float(model.coef_[0, 0]), intercept=float(model.intercept_[0]))

    def apply(self, p_fake: np.ndarray | float) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.slope * _logit(p_fake) + self.intercept)))
