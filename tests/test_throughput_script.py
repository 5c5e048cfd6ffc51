"""The throughput benchmark runs end to end (on a few small images; the figures are not judged)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_throughput_benchmark_measures_every_path(tmp_path, trained_home, tiny_clip):
    out = tmp_path / "throughput"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.scripts.throughput", "--images", "12", "--size", "96", "--home", str(trained_home),
         "--out", str(out), "--set", f"features.weights=local-dir:{tiny_clip}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads((out / "throughput.json").read_text())
    paths = [run["path"] for run in report["runs"]]
    assert paths == ["decode+resize 224 (PIL)", "triage spectrum", "triage dct", "triage residual",
                     "full, cold feature cache", "full, warm feature cache"]
    assert all(run["images"] == 12 and run["images_per_second"] > 0 for run in report["runs"])
    cold, warm = report["runs"][-2:]
    assert (cold["embedded"], warm["embedded"]) == (12, 0)
    assert report["runs"][0]["vs_decode"] == 1.0
