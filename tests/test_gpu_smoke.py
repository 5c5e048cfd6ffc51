"""The GPU smoke benchmark runs end to end: random-weight checkpoints of the four seed experts, loaded
through their cards and run on photographs (tiny sizes; the figures are not judged, their sanity is)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SEED_EXPERTS = ["fakevlm", "legion", "npr", "univfd"]  # the writers of tests/support, in their order


def run_smoke(out: Path, *args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.scripts.gpu_smoke", "--size", "tiny", "--images", "2", "--out", str(out),
         *args],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    assert "GPU smoke" in result.stdout  # the table
    return json.loads((out / "gpu_smoke.json").read_text())


def check_rows(report: dict, device: str) -> None:
    rows = report["rows"]
    assert [row["expert"] for row in rows] == SEED_EXPERTS
    for row in rows:
        assert (row["status"], row["size"], row["device"], row["images"]) == ("ok", "tiny", device, 2), row
        assert row["images_per_second"] > 0 and row["load_seconds"] > 0 and row["parameters"] > 0
        assert row["peak_memory_mib"] is not None and row["peak_memory_mib"] >= 0
        assert 0.0 <= row["p_fake_min"] <= row["p_fake_max"] <= 1.0
    by_expert = {row["expert"]: row for row in rows}
    assert by_expert["legion"]["masks_per_image"] is not None and by_expert["legion"]["masks_per_image"] >= 0
    # only LEGION localises
    assert all(row["masks_per_image"] is None for name, row in by_expert.items() if name != "legion")
    assert report["photographs"] == ["chelsea", "coffee"] and report["torch"]


def test_tiny_checkpoints_of_every_seed_expert_run_on_the_cpu(tmp_path):
    report = run_smoke(tmp_path, "--device", "cpu")
    check_rows(report, "cpu")
    assert report["device_type"] == "cpu"
    (npr,) = [row for row in report["rows"] if row["expert"] == "npr"]
    assert npr["parameters"] == 1_437_761 and npr["dtype"] == "float32" and npr["batch_size"] == 16


def test_a_full_size_7b_model_is_skipped_on_the_cpu_with_the_reason(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.scripts.gpu_smoke", "--expert", "fakevlm", "--size", "full",
         "--device", "cpu", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads((tmp_path / "gpu_smoke.json").read_text())["rows"]
    assert row["status"] == "skipped" and "--allow-cpu-full" in row["reason"]
    assert abs(row["parameters"] - 7.06e9) < 0.01e9 and row["images_per_second"] is None


@pytest.mark.gpu
def test_tiny_checkpoints_of_every_seed_expert_run_on_cuda(tmp_path):
    report = run_smoke(tmp_path, "--device", "cuda")
    check_rows(report, "cuda")
    assert report["device_type"] == "cuda" and report["cuda"]


def test_repeated_and_listed_options_both_select_several():
    from benchmarks.scripts.gpu_smoke import parse_args

    repeated = parse_args(["--size", "tiny", "--size", "full", "--expert", "npr", "--expert", "univfd"])
    listed = parse_args(["--size", "tiny", "full", "--expert", "npr", "univfd"])
    assert repeated.size == listed.size == ["tiny", "full"] and repeated.expert == listed.expert == ["npr", "univfd"]
    assert parse_args([]).size == ["tiny"] and len(parse_args([]).expert) == 4
