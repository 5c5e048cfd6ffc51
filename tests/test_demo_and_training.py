"""`coe demo` on a small built-in benchmark, and `coe experts train` on a labelled folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from rich.console import Console

from conftest import SMALL_BENCHMARK, tiny_config
from coe.demo import run_demo
from router.artifact import read_router_meta


def test_demo_trains_routes_and_compares_every_system(tmp_path, tiny_clip, trained_home):
    # Reuse the session's benchmark images so the demo trains from scratch without rebuilding them.
    shutil.copytree(trained_home / "benchmarks", tmp_path / "home" / "benchmarks")
    console = Console(record=True, width=150)
    report = run_demo(tiny_config(tmp_path, tiny_clip), tmp_path, console, SMALL_BENCHMARK, show_progress=False)
    systems = report["systems"]
    assert set(systems) == {"spectrum", "dct", "residual", "random", "merged", "routed", "oracle"}
    assert all(row["cost"] > 0 for row in systems.values())
    # Trained on the built-in benchmark, the experts tell its held-out fakes apart, and routing among
    # them does no worse than routing at random.
    assert max(systems[e]["auc"] for e in ("spectrum", "dct", "residual")) > 0.8
    assert systems["routed"]["accuracy"] >= systems["random"]["accuracy"]
    assert systems["oracle"]["accuracy"] >= max(systems[e]["accuracy"] for e in ("spectrum", "dct", "residual"))
    # The router's evaluation and the verdicts of `coe route` on the same images agree.
    assert report["through_coe_route"]["accuracy"] == systems["routed"]["accuracy"]
    text = console.export_text()
    assert "held-out test split" in text and "accuracy per generator" in text and "oracle gap" in text
    assert json.loads((tmp_path / "demo.json").read_text())["evaluation"] == report["evaluation"]
    routed_rows = (tmp_path / "route" / "results.jsonl").read_text().splitlines()
    test_rows = (tmp_path / "test_manifest.csv").read_text().splitlines()[1:]
    assert len(routed_rows) == len(test_rows) == report["evaluation"]["n_images"] > 0
    assert all(json.loads(row)["error"] is None for row in routed_rows)
    meta = read_router_meta(tmp_path / "home" / "routers" / "default")
    assert meta.metrics["accuracy"] == systems["routed"]["accuracy"]
    assert (tmp_path / "evaluation" / "cost_accuracy.png").exists()


def test_experts_train_cli_saves_weights_with_metadata(tmp_path, trained_home, tiny_clip):
    benchmark = trained_home / "benchmarks/builtin"
    data = tmp_path / "data"
    (data / "real").mkdir(parents=True)
    shutil.copytree(benchmark / "fake", data / "fake")
    for image in sorted((benchmark / "real").rglob("*.png")):
        shutil.copy(image, data / "real" / image.name)
    (data / "real" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n-not-really")
    out = tmp_path / "dct-model"
    result = subprocess.run(
        [sys.executable, "-m", "coe", "experts", "train", "dct", "--data", str(data), "--out", str(out),
         "--set", f"home={tmp_path}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["skipped"] == {str(data / "real" / "broken.png"): "corrupt"}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["family"] == "dct" and len(meta["training_data_hash"]) == 64
    assert meta["n_train"]["real"] == len(list((data / "real").glob("*.png"))) - 1
    assert 0.5 <= meta["metrics"]["holdout_auc"] <= 1.0
    missing = subprocess.run(
        [sys.executable, "-m", "coe", "experts", "train", "dct", "--data", str(tmp_path / "nowhere")],
        capture_output=True, text=True, timeout=120,
    )
    assert missing.returncode == 2 and "needs a real/ and a fake/ subfolder" in missing.stderr
