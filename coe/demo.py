"""`coe demo`: the whole system on the embedded default, end to end, in a few minutes.

Builds the built-in benchmark, trains the experts, runs them over it (`coe bench run`), trains
the query-level router on the router_train outcomes (`coe router train`), routes the held-out
test split through `coe route`, and compares the routed system with every single expert, a
random router, all experts merged and the oracle (`coe router eval`)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
from rich.console import Console

from benchmarks.builtin import BuiltinBenchmarkConfig
from benchmarks.metrics import detection_scores
from benchmarks.readers import BenchmarkSpec, read_benchmark
from benchmarks.runner import OUTCOMES_FILE
from coe.bench import BUILTIN_FOLDER
from coe.config import CoeConfig
from coe.core.console import show
from coe.defaults import DEFAULT_OUTCOMES, build_default_models
from coe.pipeline import route
from coe.results import RESULTS_JSONL, render_summary
from coe.routing import EVALUATION_DIR, evaluate_router, render_evaluation

TEST_MANIFEST = "test_manifest.csv"


def run_demo(
    config: CoeConfig,
    out_dir: Path,
    console: Console,
    benchmark: BuiltinBenchmarkConfig | None = None,
    show_progress: bool = True,
) -> dict:
    out_dir = out_dir.resolve()  # the test manifest lists absolute paths
    home = out_dir / "home"
    for trained in ("experts", "routers", "bench"):  # the demo always trains; the feature cache may stay
        shutil.rmtree(home / trained, ignore_errors=True)
    config = config.model_copy(update={"home": home})
    config.router.path = None
    router_folder = build_default_models(
        config, lambda message: show(console, message, "cyan"), benchmark, console, show_progress
    )

    test_items = read_benchmark(
        BenchmarkSpec(name="builtin", reader="builtin", root=home / BUILTIN_FOLDER, splits=["test"])
    )
    manifest = out_dir / TEST_MANIFEST
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "subject", "generator"])
        writer.writeheader()
        writer.writerows(
            {"path": str(item.path), "label": item.label, "subject": item.subject, "generator": item.generator}
            for item in test_items
        )
    console.print(f"routing the held-out test split ({len(test_items)} images) with `coe route`", style="cyan")
    summary = route(
        config, [], out_dir / "route", manifests=[manifest], restart=True, console=console,
        show_progress=show_progress,
    )
    render_summary(summary, console)
    verdicts = [json.loads(line) for line in (out_dir / "route" / RESULTS_JSONL).read_text().splitlines()]
    by_path = {verdict["path"]: verdict for verdict in verdicts}
    routed_p = np.array([by_path[str(item.path)]["p_fake"] for item in test_items])
    is_fake = np.array([item.label == "fake" for item in test_items], dtype=int)
    through_route = detection_scores(routed_p, is_fake)
    uncertain = float(np.mean([by_path[str(item.path)]["label"] == "uncertain" for item in test_items]))

    evaluation, meta, evaluation_report = evaluate_router(
        config, router_folder, [home / DEFAULT_OUTCOMES / OUTCOMES_FILE], out_dir / EVALUATION_DIR, splits=["test"],
        console=console, show_progress=show_progress,
    )
    render_evaluation(evaluation, console, "held-out test split of the built-in benchmark", meta.random_weights)
    console.print(
        f"`coe route` on the same images: accuracy {through_route['accuracy']:.3f}, AUC {through_route['auc']:.3f}; "
        f"'uncertain' verdicts {uncertain:.1%} (accuracy counts p_fake >= 0.5). "
        f"Router evaluation report: {evaluation_report}"
    )
    report = {
        "evaluation": evaluation.headline(),
        "systems": evaluation.systems.to_dict("index"),
        "through_coe_route": through_route,
        "uncertain_share": uncertain,
        "evaluation_report": str(evaluation_report),
    }
    (out_dir / "demo.json").write_text(json.dumps(report, indent=2))
    return report
