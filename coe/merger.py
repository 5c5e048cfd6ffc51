"""The merger: turns the routed expert's output (or, for an escalated image, the outputs of the
experts it was escalated to) into the verdict users read — a calibrated p_fake, a label real /
fake / uncertain, who decided, and why — and gathers the evidence: the experts' explanations, the
artifacts they localised (phrase, category, mask) and the mask the verdict shows.

What the file itself says about its origin (`Provenance`) is weighed by grade: a proof settles the
image before any pixel is looked at (`settle`); a claim or a hint multiplies the pixel experts'
odds by the configured likelihood ratio, the way it points (`merge`); a finding of grade none, and
no finding at all, change nothing: missing metadata is no evidence of a real photo."""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel

from coe.config import MergerConfig
from coe.core.records import (
    POINTS_TOWARDS, EvidenceGrade, ExpertOutput, Label, Localization, Provenance, ProvenanceFinding, RoutingDecision,
    VerdictLabel,
)
from router.calibration import PlattCalibration

PROVENANCE = "provenance"  # decided_by for what a proof settled, and the suffix when provenance moved p_fake


class MergedVerdict(BaseModel):
    label: VerdictLabel
    p_fake: float
    decided_by: str
    reason: str
    explanation: str
    mask_file: str | None = None


class Evidence(BaseModel):
    """The provenance findings the merger acts on: those of the record's grade that point a way
    (`experts.provenance.summarise` chose the grade). `towards` is None when they disagree, and
    then nothing is applied."""

    grade: EvidenceGrade
    towards: Label | None
    findings: list[ProvenanceFinding]

    @classmethod
    def strongest(cls, provenance: Provenance | None) -> Evidence | None:
        if provenance is None or provenance.grade == "none":
            return None
        pointing = [f for f in provenance.findings if f.grade == provenance.grade and f.says in POINTS_TOWARDS]
        if not pointing:
            return None
        return cls(grade=provenance.grade, towards=POINTS_TOWARDS.get(provenance.says), findings=pointing)

    def said(self) -> str:
        """`claim (a1111): PNG parameters name ...; claim (iptc): ...`; a proof names its signer."""
        return "; ".join(
            f"{self.grade} ({finding.source}{f', signed by {finding.signer}' if finding.signer else ''}): "
            f"{finding.detail}"
            for finding in self.findings
        )


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

    def settle(self, provenance: Provenance | None) -> MergedVerdict | None:
        """The verdict a proof decides on its own (no router, no pixel expert), or None: the image
        is routed. A proof that names no direction (an edit without AI), or proofs that disagree,
        settle nothing."""
        evidence = Evidence.strongest(provenance)
        if evidence is None or evidence.grade != "proof" or evidence.towards is None:
            return None
        label: VerdictLabel = evidence.towards
        return MergedVerdict(
            label=label,
            p_fake=1.0 if label == "fake" else 0.0,
            decided_by=PROVENANCE,
            reason=f"{label}: {evidence.said()}; settled by provenance, not routed",
            explanation=self._provenance_explained(provenance),
        )

    def merge(
        self, decision: RoutingDecision, outputs: list[ExpertOutput], localization: Localization | None = None,
        provenance: Provenance | None = None,
    ) -> MergedVerdict:
        """`outputs`: the routed expert's first, then those of the experts it was escalated to;
        `localization`: what the localising expert found once the verdict was known. It adds
        evidence (explanation, artifacts, the mask shown) and never changes the label. `provenance`:
        what the file says; a claim or a hint moves p_fake (a proof is `settle`'s)."""
        merged = self._merge_escalated(decision, outputs) if len(outputs) > 1 else self._merge_one(decision, outputs[0])
        if provenance is not None:
            merged = self._weigh_provenance(merged, decision, provenance)
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

    def _weigh_provenance(self, merged: MergedVerdict, decision: RoutingDecision, provenance: Provenance) -> MergedVerdict:
        """Bayes in log-odds: the pixel answer's odds times the likelihood ratio of the strongest
        claim or hint, towards the side it points. A router's abstention (pixel experts outside
        their domain) stands against a hint; a claim, independent of the pixels, lifts it."""
        explanation = "; ".join(part for part in (self._provenance_explained(provenance), merged.explanation) if part)
        evidence = Evidence.strongest(provenance)
        if evidence is None or evidence.grade == "proof":  # a proof that settled nothing moves nothing either
            return merged.model_copy(update={"explanation": explanation})
        if evidence.towards is None:
            return merged.model_copy(update={
                "explanation": explanation,
                "reason": f"{merged.reason}; provenance disagrees with itself, nothing applied: {evidence.said()}",
            })
        ratios = self.config.claim_likelihood_ratio if evidence.grade == "claim" else self.config.hint_likelihood_ratio
        ratio = getattr(ratios, f"towards_{evidence.towards}")
        # The pixel experts' calibration is the built-in benchmark's, overconfident on real generators
        # (coe wild): their answer is held within the configured confidence before evidence weighs in.
        bound = self.config.pixel_confidence
        pixel = min(max(merged.p_fake, 1.0 - bound), bound)
        log_odds = math.log(pixel / (1.0 - pixel)) + (1 if evidence.towards == "fake" else -1) * math.log(ratio)
        p_fake = 1.0 / (1.0 + math.exp(-log_odds))
        abstention_stands = decision.abstained and not decision.escalated_to and evidence.grade == "hint"
        label = "uncertain" if abstention_stands else self.label_for(p_fake)
        stands = "; the router's abstention stands against a hint" if abstention_stands else ""
        return merged.model_copy(update={
            "label": label,
            "p_fake": p_fake,
            "decided_by": f"{merged.decided_by}+{PROVENANCE}",
            "reason": f"{label}: {evidence.said()}; pixel p_fake {merged.p_fake:.2f} -> {p_fake:.2f} (likelihood ratio "
            f"{ratio:g} towards {evidence.towards}){stands}; the pixels alone: {merged.reason}",
            "explanation": explanation,
        })

    @staticmethod
    def _provenance_explained(provenance: Provenance) -> str:
        """Every finding, weighed or not (an invalid manifest included); nothing when there is none."""
        lines = [f"{finding.grade} ({finding.source}): {finding.detail}" for finding in provenance.findings]
        if provenance.error:
            lines.insert(0, f"could not be fully read ({provenance.error})")
        return f"provenance: {'; '.join(lines)}" if lines else ""

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
