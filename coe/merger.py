"""The merger: turns the routed expert's output (or, for an escalated image, the outputs of the
experts it was escalated to) into the verdict users read — a calibrated p_fake, a label real /
fake / uncertain, who decided, and why — and gathers the evidence: the experts' explanations, the
artifacts they localised (phrase, category, mask) and the mask the verdict shows."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from coe.config import MergerConfig
from coe.core.records import ExpertOutput, Localization, RoutingDecision, VerdictLabel
from router.calibration import PlattCalibration


class MergedVerdict(BaseModel):
    label: VerdictLabel
    p_fake: float
    decided_by: str
    reason: str
    explanation: str
    mask_file: str | None = None


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

    def merge(
        self, decision: RoutingDecision, outputs: list[ExpertOutput], localization: Localization | None = None
    ) -> MergedVerdict:
        """`outputs`: the routed expert's first, then those of the experts it was escalated to;
        `localization`: what the localising expert found once the verdict was known. It adds
        evidence (explanation, artifacts, the mask shown) and never changes the label."""
        merged = self._merge_escalated(decision, outputs) if len(outputs) > 1 else self._merge_one(decision, outputs[0])
        # The mask shown is the localiser's, else that of the first expert (the routed one) that gave one.
        evidence = [localization, *outputs] if localization else outputs
        merged.mask_file = next((item.union_mask_file for item in evidence if item.union_mask_file), None)
        if localization:
            merged.explanation += "; " + self._explained(localization)
        return merged

    def _merge_one(self, decision: RoutingDecision, output: ExpertOutput) -> MergedVerdict:
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
    def _explained(evidence: ExpertOutput | Localization) -> str:
        if isinstance(evidence, ExpertOutput):
            said = f"{evidence.expert} judged the image {evidence.label} (raw p_fake {evidence.p_fake:.2f})"
        else:
            said = f"{evidence.expert} was asked where the artifacts are"
        if evidence.artifacts:
            found = "; ".join(f"{artifact.category}: {artifact.phrase}" for artifact in evidence.artifacts)
            said += f" and localised {len(evidence.artifacts)} artifact(s) ({found})"
        elif isinstance(evidence, Localization) and not isinstance(evidence, ExpertOutput):
            said += " and localised none"
        return f"{said}: {evidence.explanation}" if evidence.explanation else said
