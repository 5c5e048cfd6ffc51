"""`coe demo`: the whole system on the embedded default, end to end, in a few minutes.

Builds the built-in benchmark, trains the experts and the router into a fresh home under the
demo folder, routes the held-out test split through `coe route`, and compares the routed system
with every single expert, a random router and the oracle."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks.builtin import BuiltinBenchmarkConfig, read_builtin_manifest
from benchmarks.metrics import correctness, detection_scores, routing_comparison
from coe.config import CoeConfig
from coe.models import BENCHMARK_FOLDER, ExpertPool, build_default_models, expert_probabilities, read_manifest_split
from coe.pipeline import route
from coe.results import RESULTS_JSONL, render_summary
from router.artifact import read_router_meta

TEST_MANIFEST = "test_manifest.csv"


def run_demo(
    config: CoeConfig,
    out_dir: Path,
    console: Console,
    benchmark: BuiltinBenchmarkConfig | None = None,
    show_progress: bool = True,
) -> dict[str, dict[str, float]]:
    out_dir = out_dir.resolve()  # the test manifest lists absolute paths
    home = out_dir / "home"
    for trained in ("experts", "routers"):  # the demo always trains; the feature cache may stay
        shutil.rmtree(home / trained, ignore_errors=True)
    config = config.model_copy(update={"home": home})
    config.router.path = None
    router_folder = build_default_models(config, lambda message: console.print(f"[cyan]{message}"), benchmark)
    meta = read_router_meta(router_folder)

    benchmark_dir = home / BENCHMARK_FOLDER
    test_rows = read_builtin_manifest(benchmark_dir, "test")
    manifest = out_dir / TEST_MANIFEST
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(test_rows[0]))
        writer.writeheader()
        writer.writerows({**row, "path": str(benchmark_dir / row["path"])} for row in test_rows)

    console.print(f"[cyan]routing the held-out test split ({len(test_rows)} images) with `coe route`")
    summary = route(
        config, [], out_dir / "route", manifests=[manifest], restart=True, console=console,
        show_progress=show_progress,
    )
    render_summary(summary, console)
    routed = {}
    for line in (out_dir / "route" / RESULTS_JSONL).read_text().splitlines():
        verdict = json.loads(line)
        routed[verdict["path"]] = verdict

    test = read_manifest_split(benchmark_dir, "test")
    pool = ExpertPool(config)
    names = list(pool.cards)
    raw = expert_probabilities(pool, names, test.pixels)
    p_fake = np.stack([meta.calibration[name].apply(raw[:, j]) for j, name in enumerate(names)], axis=1)
    routed_p = np.array([routed[path]["p_fake"] for path in test.paths])
    table = routing_comparison(p_fake, test.is_fake, names, routed_p)
    uncertain = np.mean([routed[path]["label"] == "uncertain" for path in test.paths])

    generators = [row["generator"] for row in test_rows]
    by_generator: dict[str, dict[str, float]] = {}
    right = correctness(p_fake, test.is_fake)
    for generator in sorted(set(generators)):
        mask = np.array([g == generator for g in generators])
        by_generator[generator] = {name: float(right[mask, j].mean()) for j, name in enumerate(names)}
        by_generator[generator]["routed"] = detection_scores(routed_p[mask], test.is_fake[mask])["accuracy"]
        by_generator[generator]["oracle"] = float(right[mask].any(axis=1).mean())

    _print_tables(console, table, by_generator, names, uncertain, meta.random_weights, len(test_rows))
    report = {"systems": table, "by_generator": by_generator, "uncertain_share": float(uncertain)}
    (out_dir / "demo.json").write_text(json.dumps(report, indent=2))
    return table


def _print_tables(console, table, by_generator, names, uncertain, random_weights, n_test) -> None:
    systems = Table(title=f"held-out test split of the built-in benchmark ({n_test} images)")
    for column in ("system", "accuracy", "AUC"):
        systems.add_column(column, justify="right" if column != "system" else "left")
    for system in [*names, "random", "routed", "oracle"]:
        style = "bold green" if system == "routed" else ""
        systems.add_row(
            system, f"{table[system]['accuracy']:.3f}", f"{table[system]['auc']:.3f}", style=style
        )
    console.print(systems)
    console.print(
        f"routed: share of the oracle gap closed {table['routed']['oracle_gap_closed']:.2f}; "
        f"'uncertain' verdicts {uncertain:.1%} (accuracy counts p_fake >= 0.5)"
    )
    per_generator = Table(title="accuracy per generator (simulated artifacts)")
    per_generator.add_column("generator")
    for system in [*names, "routed", "oracle"]:
        per_generator.add_column(system, justify="right")
    for generator, row in by_generator.items():
        per_generator.add_row(generator, *(f"{row[s]:.3f}" for s in [*names, "routed", "oracle"]))
    console.print(per_generator)
    if random_weights:
        console.print(
            "[bold red]The router read CLIP features with RANDOM weights (no pretrained CLIP weights here)."
        )
