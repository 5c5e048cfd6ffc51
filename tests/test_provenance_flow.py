"""Provenance in the flow: the merger's grading rules on hand-made records, then real files through
`coe route` (Python API and CLI), the results, the report and the HTTP endpoint."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from skimage import data as skimage_data
from test_route import COE, cli_settings

from coe.config import CoeConfig, ConfigError, LikelihoodRatios, MergerConfig, load_config
from coe.core.records import ExpertOutput, Provenance, ProvenanceFinding, RoutingDecision, Verdict
from coe.core.runs import RunMismatchError
from coe.ingest import discover
from coe.merger import Merger
from coe.pipeline import route
from coe.ray_route import RouteWorker
from coe.results import CSV_COLUMNS, RESULTS_CSV, RESULTS_JSONL
from experts.provenance import ProvenanceExpert, summarise


def decision(abstained: bool = False, escalated_to: list[str] = ()) -> RoutingDecision:
    return RoutingDecision(router_id="r", level="query", chosen="dct", abstained=abstained,
                           escalated_to=list(escalated_to), reason="dct is best")


def output(p: float, expert: str = "dct") -> ExpertOutput:
    return ExpertOutput(expert=expert, p_fake=p, label="fake" if p >= 0.5 else "real")


def finding(grade: str, says: str, source: str = "a1111", **fields) -> ProvenanceFinding:
    return ProvenanceFinding(source=source, grade=grade, says=says, detail=f"{source} says {says}", **fields)


def provenance(*findings: ProvenanceFinding) -> Provenance:
    """The record the reader makes of these findings (its rule picks the grade the merger acts on)."""
    return summarise(list(findings))


def ratios(towards_fake: float, towards_real: float | None = None) -> LikelihoodRatios:
    return LikelihoodRatios(towards_fake=towards_fake, towards_real=towards_fake if towards_real is None else towards_real)


def bounded(p: float, config: CoeConfig) -> float:
    """The pixel answer as provenance weighs it: within the configured confidence."""
    return min(max(p, 1 - config.merger.pixel_confidence), config.merger.pixel_confidence)


def odds(p: float) -> float:
    return p / (1 - p)


def test_a_trusted_proof_settles_the_image_and_names_the_signer():
    merger = Merger(MergerConfig())
    signed = provenance(finding("proof", "generated", "c2pa", signer="OpenAI", validation="trusted"))
    settled = merger.settle(signed)
    assert settled.label == "fake" and settled.p_fake == 1.0 and settled.decided_by == "provenance"
    assert "signed by OpenAI" in settled.reason and "c2pa says generated" in settled.explanation
    captured = merger.settle(provenance(finding("proof", "captured", "c2pa", signer="Leica Camera AG")))
    assert captured.label == "real" and captured.p_fake == 0.0 and "Leica Camera AG" in captured.reason


@pytest.mark.parametrize("record", [
    None,
    provenance(),
    provenance(finding("claim", "generated")),
    provenance(finding("proof", "edited", "c2pa", signer="Adobe")),  # an edit without AI decides nothing
    provenance(finding("proof", "generated", "c2pa"), finding("proof", "captured", "c2pa")),  # disagreeing proofs
    provenance(finding("none", "generated", "c2pa", validation="invalid")),
])
def test_only_an_agreeing_directed_proof_settles(record):
    assert Merger(MergerConfig()).settle(record) is None


def test_a_claim_multiplies_the_pixel_odds_by_its_likelihood_ratio_its_way():
    merger = Merger(MergerConfig(claim_likelihood_ratio=ratios(19, 9)))
    merged = merger.merge(decision(), [output(0.40)], provenance=provenance(finding("claim", "generated")))
    assert odds(merged.p_fake) == pytest.approx(odds(0.40) * 19)
    assert merged.label == "fake" and merged.decided_by == "dct+provenance"
    assert "claim (a1111): a1111 says generated; pixel p_fake 0.40 -> 0.93" in merged.reason
    assert merged.explanation.startswith("provenance: claim (a1111)") and "dct judged the image real" in merged.explanation
    towards_real = merger.merge(decision(), [output(0.60)], provenance=provenance(finding("claim", "captured", "c2pa")))
    assert odds(towards_real.p_fake) == pytest.approx(odds(0.60) / 9) and towards_real.label == "real"


def test_a_hint_is_weak_and_leaves_an_abstention_standing_while_a_claim_lifts_it():
    merger = Merger(MergerConfig(claim_likelihood_ratio=ratios(19), hint_likelihood_ratio=ratios(2)))
    hinted = merger.merge(decision(), [output(0.5)], provenance=provenance(finding("hint", "captured", "camera_exif")))
    assert hinted.p_fake == pytest.approx(1 / 3) and hinted.decided_by == "dct+provenance"
    abstained = merger.merge(decision(abstained=True), [output(0.8)],
                             provenance=provenance(finding("hint", "generated", "watermark")))
    assert abstained.label == "uncertain" and abstained.p_fake > 0.8 and "abstention stands" in abstained.reason
    lifted = merger.merge(decision(abstained=True), [output(0.5)], provenance=provenance(finding("claim", "generated")))
    assert lifted.label == "fake" and lifted.p_fake == pytest.approx(0.95)


def test_only_the_strongest_directed_grade_counts_once():
    merger = Merger(MergerConfig(claim_likelihood_ratio=ratios(19)))
    # A generator that also writes a camera Make (FLUX, Fooocus): the claim wins, the hint adds nothing;
    # two claims from the same file are not independent evidence, so the ratio applies once.
    merged = merger.merge(decision(), [output(0.5)], provenance=provenance(
        finding("claim", "generated", "flux"), finding("claim", "generated", "iptc"), finding("hint", "captured", "camera_exif"),
    ))
    assert merged.p_fake == pytest.approx(0.95)
    # A proof without a direction does not hide a claim below it.
    edited = merger.merge(decision(), [output(0.5)], provenance=provenance(
        finding("proof", "edited", "c2pa"), finding("claim", "generated", "comfyui"),
    ))
    assert edited.p_fake == pytest.approx(0.95)


@pytest.mark.parametrize("record", [
    provenance(),
    provenance(finding("none", "generated", "c2pa", validation="invalid")),
    provenance(finding("claim", "edited", "software")),
    provenance(finding("hint", "unknown", "jpeg_tables")),
    Provenance(error="the reader broke"),
])
def test_no_evidence_changes_nothing_and_is_never_real(record):
    merger = Merger(MergerConfig())
    plain = merger.merge(decision(), [output(0.5)])
    merged = merger.merge(decision(), [output(0.5)], provenance=record)
    assert (merged.label, merged.p_fake, merged.decided_by) == ("uncertain", 0.5, "dct")
    assert merged.reason == plain.reason
    for item in record.findings:
        assert item.detail in merged.explanation
    if record.error:
        assert "could not be fully read (the reader broke)" in merged.explanation


def test_disagreeing_claims_apply_nothing_and_say_so():
    merged = Merger(MergerConfig()).merge(decision(), [output(0.7)], provenance=provenance(
        finding("claim", "generated", "a1111"), finding("claim", "captured", "c2pa"),
    ))
    assert merged.p_fake == 0.7 and merged.decided_by == "dct" and "disagrees with itself" in merged.reason


def test_escalated_answers_are_weighed_too_and_extreme_pixels_stay_finite():
    merger = Merger(MergerConfig())
    escalated = decision(abstained=True, escalated_to=["spectrum"])
    merged = merger.merge(escalated, [output(0.2), output(0.4, "spectrum")],
                          provenance=provenance(finding("hint", "generated", "watermark")))
    assert merged.decided_by == "dct+spectrum+provenance" and merged.p_fake > 0.3
    # A pixel expert sure of itself is held within pixel_confidence: out of its domain it is often wrong.
    defaults = MergerConfig()
    certain = Merger(defaults).merge(decision(), [output(0.0)], provenance=provenance(finding("claim", "generated")))
    expected = odds(1 - defaults.pixel_confidence) * defaults.claim_likelihood_ratio.towards_fake
    assert odds(certain.p_fake) == pytest.approx(expected) and certain.label == "fake"
    trusting = Merger(MergerConfig(pixel_confidence=0.999999)).merge(
        decision(), [output(0.0)], provenance=provenance(finding("claim", "generated")))
    assert 0.0 < trusting.p_fake < 0.01 and trusting.label == "real"


def test_the_configuration_turns_provenance_off_and_keeps_claims_above_hints():
    assert load_config().provenance.expert == "provenance"
    assert load_config(overrides=["provenance.expert=null"]).provenance.expert is None
    with pytest.raises(ConfigError, match="hint_likelihood_ratio.towards_real must not exceed claim_likelihood_ratio"):
        load_config(overrides=["merger.claim_likelihood_ratio.towards_real=3", "merger.hint_likelihood_ratio.towards_real=4"])
    with pytest.raises(ConfigError, match="towards_fake: Input should be greater than or equal to 1"):
        load_config(overrides=["merger.claim_likelihood_ratio.towards_fake=0.5"])


# ------------------------------------------------------------------------------ real files, real runs

A1111_PARAMETERS = (
    "a photograph of an astronaut, studio light\nNegative prompt: blurry\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 160x160, Model hash: 31e35c80fc, "
    "Model: sd_xl_base_1.0, Version: v1.7.0"
)
CAMERA_EXIF = {0x010F: "Canon", 0x0110: "Canon EOS 5D Mark IV", 0x0132: "2021:06:01 10:00:00"}  # Make, Model, DateTime


def picture(name: str, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(getattr(skimage_data, name)()).convert("RGB").resize(size, Image.Resampling.BICUBIC)


def write_files(folder: Path) -> dict[str, Path]:
    """A Stable Diffusion web UI PNG (real pixels, its generation parameters in a tEXt chunk), a JPEG
    with a camera's EXIF, a plain PNG, the same plain PNG with a generator's text appended after its
    end, and a file that is no image."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / name for name in ("a1111.png", "camera.jpg", "plain.png", "appended.png", "broken.png")}
    info = PngInfo()
    info.add_text("parameters", A1111_PARAMETERS)
    picture("astronaut", (160, 160)).save(files["a1111.png"], pnginfo=info)
    exif = Image.Exif()
    for tag, value in CAMERA_EXIF.items():
        exif[tag] = value
    picture("chelsea", (192, 128)).save(files["camera.jpg"], quality=92, exif=exif)
    picture("coffee", (160, 112)).save(files["plain.png"])
    # Appended bytes are outside the container: they must not change what is read, nor the verdict.
    files["appended.png"].write_bytes(files["plain.png"].read_bytes() + b"tEXtparameters\x00" + A1111_PARAMETERS.encode())
    files["broken.png"].write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return files


def rows_by_name(out: Path) -> dict[str, dict]:
    return {Path(row["path"]).name: row for row in map(json.loads, (out / RESULTS_JSONL).read_text().splitlines())}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained_home, tiny_clip):
    """The same files routed with provenance on (the default) and off."""
    from conftest import tiny_config

    root = tmp_path_factory.mktemp("provenance-flow")
    files = write_files(root / "in")
    config = tiny_config(trained_home, tiny_clip)
    route(config, [root / "in"], root / "on", show_progress=False)
    route(tiny_config(trained_home, tiny_clip, "provenance.expert=null"), [root / "in"], root / "off", show_progress=False)
    return config, files, rows_by_name(root / "on"), rows_by_name(root / "off"), root


def test_a_generators_parameters_move_the_pixel_answer_by_the_claim_ratio(runs):
    config, _, on, off, _ = runs
    claimed, pixels_only = on["a1111.png"], off["a1111.png"]
    record = claimed["provenance"]
    assert (record["grade"], record["says"], record["source"]) == ("claim", "generated", "a1111")
    assert record["generator"] == "AUTOMATIC1111 Stable Diffusion web UI"
    assert record["findings"][0]["model"] == "sd_xl_base_1.0"
    assert pixels_only["provenance"] is None and pixels_only["decided_by"] in config.experts
    assert claimed["decided_by"] == pixels_only["decided_by"] + "+provenance"
    expected = odds(bounded(pixels_only["p_fake"], config)) * config.merger.claim_likelihood_ratio.towards_fake
    assert odds(claimed["p_fake"]) == pytest.approx(expected)
    assert f"pixel p_fake {pixels_only['p_fake']:.2f} -> {claimed['p_fake']:.2f}" in claimed["reason"]
    assert "AUTOMATIC1111" in claimed["reason"] and "sd_xl_base_1.0" in claimed["explanation"]
    assert claimed["routing"]["chosen"] == pixels_only["routing"]["chosen"]
    assert claimed["timings_ms"]["provenance"] > 0


def test_nothing_found_and_bytes_after_the_end_change_nothing(runs):
    _, _, on, off, _ = runs
    for name in ("plain.png", "appended.png"):
        row = on[name]
        assert row["provenance"]["grade"] == "none" and row["provenance"]["findings"] == [], name
        assert (row["label"], row["p_fake"], row["decided_by"]) == (
            off[name]["label"], off[name]["p_fake"], off[name]["decided_by"]), name
    assert on["broken.png"]["error"]["code"] == "corrupt" and on["broken.png"]["provenance"] is None


def test_a_cameras_exif_is_a_hint_towards_real(runs):
    config, _, on, off, _ = runs
    row = on["camera.jpg"]
    hints = [f for f in row["provenance"]["findings"] if f["source"] == "camera_exif"]
    assert hints and hints[0]["grade"] == "hint" and hints[0]["says"] == "captured"
    expected = odds(bounded(off["camera.jpg"]["p_fake"], config)) / config.merger.hint_likelihood_ratio.towards_real
    assert odds(row["p_fake"]) == pytest.approx(expected)


def test_results_csv_carries_the_provenance_columns(runs):
    *_, root = runs
    with (root / "on" / RESULTS_CSV).open(newline="") as handle:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(handle)}
    assert list(next(iter(rows.values()))) == CSV_COLUMNS
    claimed = rows["a1111.png"]
    assert (claimed["provenance_grade"], claimed["provenance_says"], claimed["provenance_source"]) == (
        "claim", "generated", "a1111")
    assert claimed["provenance_generator"] == "AUTOMATIC1111 Stable Diffusion web UI" and claimed["provenance_signer"] == ""
    assert rows["plain.png"]["provenance_grade"] == "none" and rows["broken.png"]["provenance_grade"] == ""


def test_the_cli_route_writes_provenance_and_the_switch_is_part_of_the_run(runs, tmp_path):
    config, files, *_ = runs
    out = tmp_path / "out"
    command = [*COE, "route", str(files["a1111.png"]), "--out", str(out), "--no-progress", *cli_settings(config)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert rows_by_name(out)["a1111.png"]["provenance"]["grade"] == "claim"
    assert "provenance claim" in done.stderr
    # The same folder with provenance off is another run: refused, as any other configuration change.
    refused = subprocess.run([*command, "--set", "provenance.expert=null"], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--restart" in refused.stderr


def test_a_trusted_c2pa_manifest_settles_the_image_and_an_untrusted_one_is_a_claim(tmp_path, trained_home, tiny_clip):
    """Signed by a test CA that only the user's own card trusts: with it, proof; with the shipped
    trust lists, the same manifest is valid but untrusted, a claim."""
    from tests.support import provenance_files as files
    import yaml
    from conftest import tiny_config

    authority = files.make_authority()
    anchors = files.write_trust_list(tmp_path, authority)
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "provenance-mine.yaml").write_text(yaml.safe_dump({
        "name": "provenance-mine", "family": "provenance",
        "params": {"c2pa": {"trust_anchors": [str(anchors)], "allowed_list": [], "tsa_anchors": []}},
    }))
    (tmp_path / "in").mkdir()
    signed = tmp_path / "in" / "signed.jpg"
    signed.write_bytes(files.sign_c2pa(files.jpeg_bytes(files.photo(128)), "image/jpeg", authority,
                                       "trainedAlgorithmicMedia", agent="Test Diffusion 2"))
    plain = write_files(tmp_path / "in")["plain.png"]
    trusting = tiny_config(trained_home, tiny_clip, f"experts_dir={cards}", "provenance.expert=provenance-mine")
    summary = route(trusting, [signed, plain], tmp_path / "trusted", show_progress=False)
    rows = rows_by_name(tmp_path / "trusted")
    settled = rows["signed.jpg"]
    assert (settled["label"], settled["p_fake"], settled["decided_by"]) == ("fake", 1.0, "provenance")
    assert settled["routing"] is None and settled["expert_outputs"] == [] and settled["features"] is None
    assert settled["provenance"]["grade"] == "proof" and settled["provenance"]["says"] == "generated"
    signer = settled["provenance"]["signer"]
    assert signer and f"signed by {signer}" in settled["reason"] and "not routed" in settled["reason"]
    assert rows["plain.png"]["routing"] is not None  # the other image of the chunk was routed as usual
    assert summary.experts["provenance"] == 1 and summary.embedded <= 1

    untrusted = route(tiny_config(trained_home, tiny_clip), [signed], tmp_path / "shipped", show_progress=False)
    claimed = rows_by_name(tmp_path / "shipped")["signed.jpg"]
    (manifest,) = [finding for finding in claimed["provenance"]["findings"] if finding["source"] == "c2pa"]
    assert claimed["provenance"]["grade"] == manifest["grade"] == "claim" and manifest["validation"] == "valid"
    assert claimed["decided_by"].endswith("+provenance") and claimed["routing"] is not None
    assert untrusted.experts.get("provenance") is None


def test_a_reader_that_fails_costs_only_its_record(tmp_path, trained_config, monkeypatch):
    files = write_files(tmp_path / "in")

    def broken(self, data: bytes) -> Provenance:
        raise RuntimeError("the reader broke")

    monkeypatch.setattr(ProvenanceExpert, "inspect", broken)
    route(trained_config, [files["a1111.png"], files["plain.png"]], tmp_path / "out", show_progress=False)
    for row in rows_by_name(tmp_path / "out").values():
        assert row["error"] is None and row["label"] in {"real", "fake", "uncertain"}
        assert row["provenance"]["grade"] == "none" and "RuntimeError: the reader broke" in row["provenance"]["error"]
        assert "could not be fully read" in row["explanation"]


def test_a_fixed_expert_and_a_ray_worker_weigh_provenance_too(runs, tmp_path):
    config, files, on, _, _ = runs
    route(config, [files["a1111.png"]], tmp_path / "fixed", expert="dct", show_progress=False)
    fixed = rows_by_name(tmp_path / "fixed")["a1111.png"]
    assert fixed["decided_by"] == "dct+provenance" and fixed["provenance"]["grade"] == "claim"
    # What a Ray actor runs (coe.ray_route.RouteWorker), here in this process: it decodes on its own.
    worker = RouteWorker(config, None, tmp_path / "ray")
    (verdict,) = worker.analyse(discover([files["a1111.png"]]))
    assert isinstance(verdict, Verdict) and verdict.provenance.grade == "claim"
    assert verdict.p_fake == pytest.approx(on["a1111.png"]["p_fake"]) and verdict.decided_by == on["a1111.png"]["decided_by"]


def test_the_run_identity_includes_the_provenance_reader(runs, tmp_path):
    config, files, *_ = runs
    route(config, [files["plain.png"]], tmp_path / "out", show_progress=False)
    identity = json.loads((tmp_path / "out" / "run.json").read_text())
    assert identity["provenance"]["card"] == "provenance" and identity["provenance"]["identity"]
    off = config.model_copy(update={"provenance": config.provenance.model_copy(update={"expert": None})})
    with pytest.raises(RunMismatchError):
        route(off, [files["plain.png"], files["a1111.png"]], tmp_path / "out", show_progress=False)


@pytest.mark.browser
def test_the_report_shows_provenance_and_filters_by_grade(page, runs):
    from test_run_report import cards, choose, open_report

    *_, root = runs
    open_report(page, root / "on")
    assert page.events.problems() == []
    grades = page.eval_on_selector_all("#provenance-grades tr td", "cells => cells.map(c => c.textContent)")
    assert grades == ["claim", "1", "hint", "1", "none", "2"]
    choose(page, "#filter-grade", "claim")
    (claimed,) = cards(page)
    assert claimed["path"].endswith("a1111.png")
    line = page.text_content("#gallery article.card .provenance")
    assert line == "provenance claim: generated, from a1111, generator AUTOMATIC1111 Stable Diffusion web UI"
    page.click("#gallery article.card details summary")
    assert "sd_xl_base_1.0" in page.text_content("#gallery article.card details")
    choose(page, "#filter-grade", "none")
    assert sorted(Path(card["path"]).name for card in cards(page)) == ["appended.png", "plain.png"]
    choose(page, "#filter-grade", "not read")
    assert [Path(card["path"]).name for card in cards(page)] == ["broken.png"]
    assert page.events.problems() == []


@pytest.fixture(scope="module")
def served(trained_home, tiny_clip):
    """The application as `coe serve` runs it (a one-machine Ray cluster on loopback, no key needed there)."""
    import os
    import socket

    from conftest import tiny_config

    from coe.serve import ServeSettings, running

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    auto_connect = os.environ.get("RAY_ENABLE_AUTO_CONNECT")
    try:
        with running(tiny_config(trained_home, tiny_clip), ServeSettings(port=port), say=lambda message: None) as url:
            yield url
    finally:
        if auto_connect is None:
            os.environ.pop("RAY_ENABLE_AUTO_CONNECT", None)


def test_the_http_endpoint_returns_provenance_as_route_does(served, runs):
    import requests

    _, files, on, _, _ = runs
    uploads = [("files", (name, files[name].read_bytes())) for name in ("a1111.png", "plain.png")]
    response = requests.post(f"{served}/v1/analyze", files=uploads, params={"masks": "none"}, timeout=120)
    assert response.status_code == 200, response.text
    verdicts = {verdict["path"]: verdict for verdict in response.json()["verdicts"]}
    claimed = verdicts["a1111.png"]
    assert claimed["provenance"]["grade"] == "claim" and claimed["provenance"]["source"] == "a1111"
    assert claimed["decided_by"] == on["a1111.png"]["decided_by"]
    assert claimed["p_fake"] == pytest.approx(on["a1111.png"]["p_fake"], abs=1e-5)
    assert verdicts["plain.png"]["provenance"]["grade"] == "none"
