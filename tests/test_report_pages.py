"""The benchmark and router pages: their plots (ROC, reliability, cost–accuracy), the scores the
router evaluation keeps for them, and the pages themselves in headless Chromium — loaded from disk
without a console error, every image shown, every name from a file shown as text, never run."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from benchmarks.curves import plot_cost_accuracy
from benchmarks.metrics import expected_calibration_error
from benchmarks.plots import plot_reliability, plot_roc, reliability_curves, roc_curves
from benchmarks.routing_eval import SYSTEMS_BESIDE_EXPERTS, evaluate_routing, write_evaluation
from coe.cli import app
from coe.defaults import DEFAULT_OUTCOMES, DEFAULT_ROUTER
from coe.reports.pages import write_router_report
from coe.results import REPORT_FILE
from coe.routing import EVALUATION_DIR
from router.artifact import RouterMeta

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HOSTILE = "<img src=x onerror=alert(1)>"
EXPERTS = ["spectrum", "dct", "residual"]


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_SIGNATURE


def noisy_scores(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) P(fake) that tell fakes apart to different degrees, and is_fake."""
    rng = np.random.default_rng(seed)
    is_fake = rng.random(n) > 0.5
    separation = np.array([0.2, 0.35, 0.5])
    p_fake = np.clip(0.5 + (is_fake[:, None] - 0.5) * separation + rng.normal(0, 0.2, (n, 3)), 0, 1)
    return p_fake, is_fake


def test_roc_aucs_are_sklearns_without_the_unanswered_images(tmp_path):
    p_fake, is_fake = noisy_scores()
    p_fake[:7, 1] = np.nan  # dct failed on seven images
    scores = {"spectrum": p_fake[:, 0], "dct $\\x$": p_fake[:, 1]}  # `$` would start matplotlib's math mode
    curves = roc_curves(scores, is_fake)
    assert curves["spectrum"].auc == pytest.approx(roc_auc_score(is_fake, p_fake[:, 0]))
    assert curves["dct $\\x$"].auc == pytest.approx(roc_auc_score(is_fake[7:], p_fake[7:, 1]))
    assert is_png(plot_roc(scores, is_fake, tmp_path / "roc.png", "toy $roc"))


def test_reliability_bins_and_ece_are_those_of_the_metric_tables(tmp_path):
    p_fake = np.array([0.05] * 4 + [0.95] * 4)
    is_fake = np.array([0, 0, 0, 1, 1, 1, 1, 0], dtype=bool)
    curve = reliability_curves({"a": p_fake}, is_fake)["a"]
    assert curve.mean_p_fake == pytest.approx([0.05, 0.95]) and curve.share_fake == pytest.approx([0.25, 0.75])
    assert curve.ece == pytest.approx(expected_calibration_error(p_fake, is_fake)) and curve.ece == pytest.approx(0.2)
    assert is_png(plot_reliability({"a": p_fake}, is_fake, tmp_path / "reliability.png", "toy"))


@pytest.mark.parametrize(
    "p_fake, is_fake",
    [
        (np.array([0.2, 0.9, 0.4]), np.array([True, True, True])),  # one class
        (np.array([np.nan, np.nan]), np.array([True, False])),  # nothing answered
        (np.array([]), np.array([], dtype=bool)),  # no images
    ],
    ids=["one-class", "all-failed", "empty"],
)
def test_degenerate_scores_draw_a_plot_that_says_so(tmp_path, p_fake, is_fake):
    assert roc_curves({"a": p_fake}, is_fake) == {}
    assert is_png(plot_roc({"a": p_fake}, is_fake, tmp_path / "roc.png", "degenerate"))
    assert is_png(plot_reliability({"a": p_fake}, is_fake, tmp_path / "reliability.png", "degenerate"))


def test_cost_accuracy_without_a_router_shows_the_experts_and_the_oracle(tmp_path):
    path = plot_cost_accuracy(None, {"a": (1.0, 0.7), "b $2$": (2.0, 0.8)}, (1.3, 0.9), tmp_path / "c.png", "bench")
    with Image.open(path) as image:
        assert image.format == "PNG" and np.unique(np.asarray(image.convert("L"))).size > 20


def toy_evaluation(n: int = 240):
    p_fake, is_fake = noisy_scores(n)
    p_fake[3, 1] = np.nan
    rng = np.random.default_rng(1)
    right = (p_fake >= 0.5) == is_fake[:, None]
    groups = {
        "subject": rng.choice(["human", HOSTILE, "NA"], n).tolist(),
        "generator": np.where(is_fake, rng.choice(["gan", f"gen {HOSTILE}"], n), "real").tolist(),
    }
    return evaluate_routing(
        p_fake, is_fake, EXPERTS, [2.0, 2.0, 1.0], right + rng.normal(0, 0.3, right.shape), rng.integers(0, 3, n),
        groups, abstained=rng.random(n) < 0.1,
    )


def test_the_evaluation_keeps_every_systems_scores_and_its_tables_agree_with_its_plots(tmp_path):
    evaluation = toy_evaluation()
    systems = evaluation.systems
    assert evaluation.scores.shape == (evaluation.n_images, len(EXPERTS) + len(SYSTEMS_BESIDE_EXPERTS))
    assert list(evaluation.scores.columns) == list(systems.index) and evaluation.is_fake.shape == (evaluation.n_images,)
    assert evaluation.scores.drop(columns="merged").notna().all().all()  # a failed expert answered wrong
    curves = roc_curves(evaluation.scores, evaluation.is_fake)
    reliability = reliability_curves(evaluation.scores, evaluation.is_fake)
    for name in systems.index:  # the legends show the table's numbers
        assert curves[name].auc == pytest.approx(systems.loc[name, "auc"])
        assert reliability[name].ece == pytest.approx(systems.loc[name, "ece"])
    by_subject = evaluation.breakdown["subject"]
    assert list(by_subject.columns) == [*systems.index, "n"] and by_subject["n"].sum() == evaluation.n_images
    plots = write_evaluation(evaluation, tmp_path, "toy")
    assert set(plots) == {"cost_accuracy", "roc", "reliability"} and all(map(is_png, plots.values()))
    assert (tmp_path / "systems.csv").exists() and (tmp_path / "by_generator.csv").exists()


def router_meta(**changes) -> RouterMeta:
    fields = dict(
        router_id=f"query-lightgbm-{HOSTILE}", level="query", model="lightgbm", extractor_id="open_clip:tiny",
        feature_dim=8, random_weights=True, experts=dict.fromkeys(EXPERTS, "v1"),
        expert_costs=dict(zip(EXPERTS, [2.0, 2.0, 1.0], strict=True)), training_data_hash="0" * 64, n_train=100,
    )
    return RouterMeta(**{**fields, **changes})


def page_text(report: Path) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", report.read_text()).split())


def test_router_page_says_how_many_training_samples_it_left_out_or_judged(tmp_path):
    held_out = replace(toy_evaluation(), training_samples_left_out=150)
    text = page_text(write_router_report(held_out, tmp_path / "held-out", "toy", {}, router_meta()))
    assert "150 samples left out: their images trained the router" in text and "optimistic" not in text
    mixed = replace(toy_evaluation(), training_samples_judged=40)
    text = page_text(write_router_report(mixed, tmp_path / "mixed", "toy", {}, router_meta()))
    assert "0 samples left out" in text
    assert "40 of these samples show images the router was trained on: the figures below are optimistic" in text
    assert "accuracy per router_side sets them apart" in text


def open_report(page, path: Path, screenshot: Path):
    """Load a page from disk and check what every report must hold: no console message, error,
    dialog or failed request; every image decoded; the screenshot a real PNG."""
    earlier_requests = len(page.events.requests)
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    assert page.events.problems() == []
    # Self-contained: everything this page asked for is a file in the report's folder.
    requests = page.events.requests[earlier_requests:]
    assert requests and all(url.startswith(path.parent.as_uri() + "/") for url in requests)
    widths = page.eval_on_selector_all("img", "images => images.map(image => image.complete ? image.naturalWidth : 0)")
    assert widths and all(width > 0 for width in widths)
    page.screenshot(path=str(screenshot), full_page=True)
    with Image.open(screenshot) as image:
        assert image.format == "PNG" and image.size[1] > 900
    return widths


def cell_texts(page, selector: str) -> list[list[str]]:
    return page.eval_on_selector_all(
        f"{selector} tbody tr", "rows => rows.map(row => [...row.cells].map(cell => cell.textContent.trim()))"
    )


def assert_names_are_text(page, expected_images: int) -> None:
    """HOSTILE is on the page as characters, and added no element and ran nothing."""
    assert page.get_by_text(HOSTILE).count() >= 1
    assert page.locator("img").count() == expected_images and page.locator("script").count() == 0
    assert page.events.dialogs == []


@pytest.mark.browser
def test_router_page_shows_every_system_and_names_as_text(tmp_path, page):
    evaluation = toy_evaluation()
    folder = tmp_path / "evaluation"
    plots = write_evaluation(evaluation, folder, f"router {HOSTILE}")
    report = write_router_report(evaluation, folder, f"router {HOSTILE}", plots, router_meta())
    open_report(page, report, tmp_path / "router.png")
    rows = cell_texts(page, "#systems")
    systems = evaluation.systems
    assert [row[0] for row in rows] == [*EXPERTS, "random router", "all experts merged", "routed (query level)",
                                        "oracle (bound)"]
    for row, (_, numbers) in zip(rows, systems.iterrows(), strict=True):
        assert row[1:] == [f"{numbers['accuracy']:.3f}", f"{numbers['auc']:.3f}", f"{numbers['ece']:.3f}",
                           f"{numbers['cost']:.2f}"]
    best_accuracy = page.locator("#systems td.best").all_text_contents()
    real = systems.drop(index="oracle")
    assert f"{real['accuracy'].max():.3f}" in best_accuracy and f"{real['cost'].min():.2f}" in best_accuracy
    assert page.locator("#systems tr.bound td.best").count() == 0  # the oracle is a bound, never "best"
    assert "random weights" in page.locator(".warning").inner_text()
    assert {row[0] for row in cell_texts(page, "#by-subject")} == {"human", HOSTILE, "NA"}
    assert_names_are_text(page, expected_images=3)


def write_manifest_benchmark(tmp_path: Path, home: Path) -> Path:
    """A manifest benchmark of built-in images whose subjects and generators are hostile names."""
    root = tmp_path / "named"
    root.mkdir()
    rows = []
    builtin = home / "benchmarks/builtin"
    for label, pattern in (("real", "real/*.png"), ("fake", "fake/*/*.png")):
        for i, image in enumerate(sorted(builtin.glob(pattern))[:8]):
            shutil.copy(image, root / f"{label}-{i}.png")
            subject = HOSTILE if i % 2 else "NA"
            generator = "real" if label == "real" else ("gan" if i % 2 else f"gen {HOSTILE}")
            rows.append({"path": f"{label}-{i}.png", "label": label, "subject": subject, "generator": generator})
    pd.DataFrame(rows).to_csv(root / "list.csv", index=False)
    definition = tmp_path / "named.yaml"
    definition.write_text(yaml.safe_dump({"name": "named", "reader": "manifest", "root": str(root),
                                          "annotations": "list.csv"}))
    return definition


def cli(config, *args) -> str:
    overrides = [f"home={config.home}", f"features.weights={config.features.weights}"]
    result = CliRunner().invoke(app, [*map(str, args), "--no-progress", *(f"--set={o}" for o in overrides)])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.browser
def test_bench_run_writes_a_report_that_loads_cleanly(tmp_path, trained_config, page):
    out = tmp_path / "bench"
    output = cli(trained_config, "bench", "run", write_manifest_benchmark(tmp_path, trained_config.home),
                 "--perturb", "none", "--perturb", "jpeg:60", "--out", out)
    assert f"report: {out / REPORT_FILE}" in " ".join(output.split())
    pngs = sorted(path.name for path in (out / "plots").iterdir())
    assert len(pngs) == 6 and all(re.fullmatch(r"\d\d-[a-z0-9-]+-(roc|reliability|cost-accuracy)\.png", n) for n in pngs)
    open_report(page, out / REPORT_FILE, tmp_path / "bench.png")
    assert [row[0] for row in cell_texts(page, "#overview")] == ["named / none", "named / jpeg:60"]
    experts = cell_texts(page, "#s01-named-none-experts")
    assert [row[0] for row in experts] == EXPERTS and all(row[1] == "16" for row in experts)
    assert page.get_by_text("NA", exact=True).count() == 2  # a subject called NA is no missing value
    assert_names_are_text(page, expected_images=6)


@pytest.mark.browser
def test_router_train_and_eval_write_reports_that_load_cleanly(tmp_path, trained_config, page):
    trained = trained_config.home / DEFAULT_ROUTER / "v1" / EVALUATION_DIR / REPORT_FILE
    open_report(page, trained, tmp_path / "trained.png")

    out = tmp_path / "eval"
    output = cli(trained_config, "router", "eval", trained_config.home / DEFAULT_ROUTER, "--outcomes",
                 trained_config.home / DEFAULT_OUTCOMES / "outcomes.parquet", "--split", "test", "--out", out)
    assert f"report: {out / REPORT_FILE}" in " ".join(output.split())
    open_report(page, out / REPORT_FILE, tmp_path / "eval.png")
    systems = pd.read_csv(out / "systems.csv", index_col="system")
    shown = {row[0]: row[1] for row in cell_texts(page, "#systems")}
    assert shown["routed (query level)"] == f"{systems.loc['routed', 'accuracy']:.3f}"
    assert shown["dct"] == f"{systems.loc['dct', 'accuracy']:.3f}"
