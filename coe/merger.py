"""The merger: turns the routed expert's output (or, for an escalated image, the outputs of the
experts it was escalated to) into the verdict users read — a calibrated p_fake, a label real /
fake / uncertain, who decided, and why."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from coe.config import MergerConfig
from coe.core.records import ExpertOutput, RoutingDecision, VerdictLabel
from router.calibration import PlattCalibration


class MergedVerdict(BaseModel):
    label: VerdictLabel
    p_fake: float
    decided_by: str
    reason: str
    explanation: str


class Merger:
    def __init__(self, config: MergerConfig, calibration: dict[str, PlattCalibration] | None = None):
        self.config = config
        self.calibration = calibration or {}

    def label_for(self, p_fake: float) -> VerdictLabel:
        if p_fake >= self.config.uncertain_high:
            return "fake"
        if p_fake <= self.config.uncertain_low:
            return "real"
        return "uncertain"

    def calibrated(self, output: ExpertOutput) -> float:
        calibration = self.calibration.get(output.expert)
        return float(calibration.apply(output.p_fake)) if calibration else output.p_fake

    def merge(self, decision: RoutingDecision, outputs: list[ExpertOutput]) -> MergedVerdict:
        """`outputs`: the routed expert's first, then those of the experts it was escalated to."""
        if len(outputs) > 1:
            return self._merge_escalated(decision, outputs)
        output = outputs[0]
        p_fake = self.calibrated(output)
        calibrated = "calibrated" if output.expert in self.calibration else "uncalibrated"
        label = "uncertain" if decision.abstained else self.label_for(p_fake)
        if decision.abstained:
            why = "the router abstained"
        elif label == "uncertain":
            why = self._in_band(p_fake)
        else:
            why = f"p_fake {p_fake:.2f} ({calibrated})"
        return MergedVerdict(
            label=label,
            p_fake=p_fake,
            decided_by=output.expert,
            reason=f"{label}: {why}; routed by {decision.router_id}: {decision.reason}",
            explanation=self._explained(output),
        )

    def _merge_escalated(self, decision: RoutingDecision, outputs: list[ExpertOutput]) -> MergedVerdict:
        """The calibrated p_fake of every consulted expert, weighted by the router's P(correct) for it."""
        p_correct = {ranked.expert: ranked.p_correct for ranked in decision.ranked}
        p_fakes = np.array([self.calibrated(output) for output in outputs])
        weights = np.array([max(p_correct.get(output.expert, 0.0), 1e-6) for output in outputs])
        p_fake = float(np.average(p_fakes, weights=weights))
        label = self.label_for(p_fake)
        experts = [output.expert for output in outputs]
        parts = ", ".join(f"{e} {p:.2f}" for e, p in zip(experts, p_fakes, strict=True))
        why = self._in_band(p_fake) if label == "uncertain" else f"p_fake {p_fake:.2f}"
        return MergedVerdict(
            label=label,
            p_fake=p_fake,
            decided_by="+".join(experts),
            reason=f"{label}: {why}, the P(correct)-weighted mean of {parts} (escalated); routed by "
            f"{decision.router_id}: {decision.reason}",
            explanation="; ".join(self._explained(output) for output in outputs),
        )

    def _in_band(self, p_fake: float) -> str:
        band = f"{self.config.uncertain_low:g}-{self.config.uncertain_high:g}"
        return f"p_fake {p_fake:.2f} lies in the uncertain band ({band})"

    @staticmethod
    def _explained(output: ExpertOutput) -> str:
        explanation = f"{output.expert} judged the image {output.label} (raw p_fake {output.p_fake:.2f})"
        return f"{explanation}: {output.explanation}" if output.explanation else explanation
