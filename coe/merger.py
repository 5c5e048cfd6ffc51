"""The merger: turns the routed expert's output into the verdict users read — a calibrated
p_fake, a label real / fake / uncertain, who decided, and why."""

from __future__ import annotations

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

    def merge(self, decision: RoutingDecision, output: ExpertOutput) -> MergedVerdict:
        calibration = self.calibration.get(output.expert)
        p_fake = float(calibration.apply(output.p_fake)) if calibration else output.p_fake
        calibrated = "calibrated" if calibration else "uncalibrated"
        label = "uncertain" if decision.abstained else self.label_for(p_fake)
        if decision.abstained:
            why = "the router abstained"
        elif label == "uncertain":
            why = (
                f"p_fake {p_fake:.2f} lies in the uncertain band "
                f"({self.config.uncertain_low:g}-{self.config.uncertain_high:g})"
            )
        else:
            why = f"p_fake {p_fake:.2f} ({calibrated})"
        explanation = f"{output.expert} judged the image {output.label} (raw p_fake {output.p_fake:.2f})"
        if output.explanation:
            explanation += f": {output.explanation}"
        return MergedVerdict(
            label=label,
            p_fake=p_fake,
            decided_by=output.expert,
            reason=f"{label}: {why}; routed by {decision.router_id}: {decision.reason}",
            explanation=explanation,
        )
