"""The merger's verdicts, and the ledger that makes runs resumable."""

from __future__ import annotations

import pytest

from coe.config import MergerConfig
from coe.core.records import ExpertOutput, RankedExpert, RoutingDecision, Verdict
from coe.core.runs import RunMismatchError
from coe.ledger import LEDGER_FILE, Ledger, check_run_identity
from coe.merger import Merger
from router.calibration import PlattCalibration


def decision(abstained: bool = False) -> RoutingDecision:
    return RoutingDecision(router_id="r", level="query", chosen="dct", abstained=abstained, reason="dct is best")


def output(p: float, expert: str = "dct") -> ExpertOutput:
    return ExpertOutput(expert=expert, p_fake=p, label="fake" if p >= 0.5 else "real")


@pytest.mark.parametrize(("p", "label"), [(0.9, "fake"), (0.65, "fake"), (0.5, "uncertain"), (0.35, "real"), (0.1, "real")])
def test_labels_follow_the_uncertain_band(p, label):
    merged = Merger(MergerConfig()).merge(decision(), [output(p)])
    assert merged.label == label and merged.p_fake == p and merged.decided_by == "dct"
    assert "routed by r: dct is best" in merged.reason
    assert ("uncertain band" in merged.reason) == (label == "uncertain")


def test_calibration_is_applied_and_abstention_gives_uncertain():
    merger = Merger(MergerConfig(), {"dct": PlattCalibration(slope=0.0, intercept=0.0)})
    merged = merger.merge(decision(), [output(0.99)])
    assert merged.p_fake == pytest.approx(0.5) and merged.label == "uncertain"
    abstained = Merger(MergerConfig()).merge(decision(abstained=True), [output(0.99)])
    assert abstained.label == "uncertain" and "the router abstained" in abstained.reason
    assert "raw p_fake 0.99" in abstained.explanation


def test_an_escalated_image_gets_the_p_correct_weighted_mean_of_its_experts():
    ranked = [RankedExpert(expert="dct", p_correct=0.6, cost=2, utility=0.6),
              RankedExpert(expert="spectrum", p_correct=0.2, cost=2, utility=0.2)]
    escalated = RoutingDecision(router_id="r", level="query", chosen="dct", abstained=True, ranked=ranked,
                                escalated_to=["spectrum"], reason="dct is best; escalated to spectrum")
    merger = Merger(MergerConfig(), {"spectrum": PlattCalibration(slope=0.0, intercept=0.0)})  # spectrum -> 0.5
    merged = merger.merge(escalated, [output(0.9), output(0.99, expert="spectrum")])
    assert merged.p_fake == pytest.approx((0.6 * 0.9 + 0.2 * 0.5) / 0.8) and merged.label == "fake"
    assert merged.decided_by == "dct+spectrum" and "escalated" in merged.reason
    assert "dct judged" in merged.explanation and "spectrum judged" in merged.explanation


def test_ledger_recovers_after_a_half_written_line(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append([Verdict(path="a", image_id="1", label="real", p_fake=0.1)])
    ledger.append([Verdict(path="a", image_id="1", label="fake", p_fake=0.9)])  # already done: ignored
    ledger.close()
    with (tmp_path / LEDGER_FILE).open("a") as handle:
        handle.write('{"path": "b", "image_id": "2", "lab')  # what a kill -9 can leave
    resumed = Ledger(tmp_path)
    assert "a" in resumed and "b" not in resumed and resumed.by_image["1"].label == "real"
    resumed.append([Verdict(path="b", image_id="2", label="fake", p_fake=0.8)])
    resumed.close()
    lines = (tmp_path / LEDGER_FILE).read_text().splitlines()
    assert [Verdict.model_validate_json(line).path for line in lines] == ["a", "b"]


def test_run_identity_guards_the_output_folder(tmp_path):
    check_run_identity(tmp_path, {"router": "r1"}, restart=False)
    check_run_identity(tmp_path, {"router": "r1"}, restart=False)
    with pytest.raises(RunMismatchError, match="different router"):
        check_run_identity(tmp_path, {"router": "r2"}, restart=False)
    (tmp_path / LEDGER_FILE).write_text("{}\n")
    check_run_identity(tmp_path, {"router": "r2"}, restart=True)
    assert not (tmp_path / LEDGER_FILE).exists()
