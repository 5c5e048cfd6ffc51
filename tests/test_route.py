"""`coe route` end to end: real files, the real CLI, the trained default models of a small home."""

from __future__ import annotations

import csv
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bad_files import TEST_LIMITS, make_mixed_folder
from coe.config import CoeConfig
from coe.core.runs import RunMismatchError
from coe.ledger import LEDGER_FILE
from coe.pipeline import route
from coe.results import CSV_COLUMNS, RESULTS_CSV, RESULTS_JSONL

COE = [sys.executable, "-m", "coe"]


def cli_settings(config: CoeConfig, *extra: str) -> list[str]:
    return [
        "--set", f"home={config.home}",
        "--set", f"features.weights={config.features.weights}",
        *(item for setting in extra for item in ("--set", setting)),
    ]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mixed_folder_gives_one_row_per_path_with_exact_error_codes(tmp_path, trained_config):
    expected = make_mixed_folder(tmp_path / "in")
    out = tmp_path / "out"
    limits = [f"ingest.max_file_bytes={TEST_LIMITS.max_file_bytes}", f"ingest.max_pixels={TEST_LIMITS.max_pixels}"]
    result = subprocess.run(
        [*COE, "route", str(tmp_path / "in"), "--out", str(out), "--no-progress",
         *cli_settings(trained_config, *limits)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(out / RESULTS_JSONL)
    by_path = {str(Path(row["path"]).relative_to(tmp_path / "in")): row for row in rows}
    assert len(rows) == len(by_path) == len(expected)
    assert sum(code is not None for code in expected.values()) >= 15  # kinds of bad file, 12 codes
    for path, code in expected.items():
        row = by_path[path]
        if code is None:
            assert row["error"] is None, (path, row["error"])
            assert row["label"] in {"real", "fake", "uncertain"} and 0.0 <= row["p_fake"] <= 1.0
            assert row["decided_by"] in trained_config.experts
            if row["routing"]["chosen"] != row["decided_by"]:  # the routed expert failed on this image
                assert f"fell back to {row['decided_by']}" in row["reason"]
            assert row["random_weights"] is False and row["features"].startswith("open_clip/local/")
        else:
            assert row["error"]["code"] == code, (path, row["error"])
            assert row["label"] is None
    with (out / RESULTS_CSV).open(newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [row["path"] for row in csv_rows] == [row["path"] for row in rows]
    assert list(csv_rows[0]) == CSV_COLUMNS
    assert "error not_an_image" in result.stderr and "decided by" in result.stderr


def test_identical_files_are_analysed_once_and_reported_under_every_path(tmp_path, trained_config):
    expected = make_mixed_folder(tmp_path / "in")
    summary = route(trained_config.model_copy(update={"ingest": TEST_LIMITS}), [tmp_path / "in"], tmp_path / "out",
                    show_progress=False)
    rows = {row["path"]: row for row in read_jsonl(tmp_path / "out" / RESULTS_JSONL)}
    # The walk is sorted, so copies/photo_copy.jpg is met first and is the one analysed.
    original, copy = rows[str(tmp_path / "in/copies/photo_copy.jpg")], rows[str(tmp_path / "in/photo.jpg")]
    assert copy["duplicate_of"] == original["path"] and original["duplicate_of"] is None
    assert copy["image_id"] == original["image_id"] and copy["p_fake"] == original["p_fake"]
    good = sum(code is None for code in expected.values())
    assert summary.duplicates == 1 and summary.analysed == good - 1


def test_second_run_over_the_same_images_embeds_nothing(tmp_path, trained_config):
    images = trained_config.home / "benchmarks/builtin/real"
    first = route(trained_config, [images], tmp_path / "first", show_progress=False)
    second = route(trained_config, [images], tmp_path / "second", show_progress=False)
    assert first.paths == second.paths > 10
    assert second.embedded == 0
    first_rows = {r["path"]: r["p_fake"] for r in read_jsonl(tmp_path / "first" / RESULTS_JSONL)}
    second_rows = {r["path"]: r["p_fake"] for r in read_jsonl(tmp_path / "second" / RESULTS_JSONL)}
    assert first_rows == second_rows


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_run_resumes_without_redoing_or_losing_an_image(tmp_path, trained_config, stop_signal):
    images = trained_config.home / "benchmarks/builtin"
    command = [*COE, "route", str(images), "--out", str(tmp_path / "out"), "--no-progress",
               *cli_settings(trained_config, "run.chunk_size=1")]
    ledger = tmp_path / "out" / LEDGER_FILE
    stop_after = random.randint(1, 40)  # a random point: after this many committed paths
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (
        not ledger.exists() or ledger.read_bytes().count(b"\n") < stop_after
    ):
        time.sleep(0.002)
    process.send_signal(stop_signal)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode in {-signal.SIGKILL, 130}, stderr
    if stop_signal == signal.SIGINT:
        assert "run the same command to resume" in " ".join(stderr.split())  # rich wraps lines
    done_at_stop = len(ledger.read_text().splitlines())

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rows = read_jsonl(tmp_path / "out" / RESULTS_JSONL)
    paths = [row["path"] for row in rows]
    expected_paths = sorted(str(p) for p in images.rglob("*") if p.is_file())
    assert sorted(paths) == expected_paths  # every path exactly once
    ledger_paths = [json.loads(line)["path"] for line in ledger.read_text().splitlines()]
    assert len(ledger_paths) == len(set(ledger_paths)) == len(expected_paths)  # nothing done twice
    if done_at_stop < len(expected_paths):
        assert f"resuming: {done_at_stop} of {len(expected_paths)}" in " ".join(resumed.stderr.split())


def test_resuming_with_another_configuration_is_refused(tmp_path, trained_config):
    images = trained_config.home / "benchmarks/builtin/real"
    route(trained_config, [images], tmp_path / "out", expert="dct", show_progress=False)
    with pytest.raises(RunMismatchError, match="--restart"):
        route(trained_config, [images], tmp_path / "out", expert="spectrum", show_progress=False)
    summary = route(trained_config, [images], tmp_path / "out", expert="spectrum", restart=True, show_progress=False)
    assert summary.done_before == 0 and summary.experts == {"spectrum": summary.analysed}


def test_fixed_expert_route_uses_no_clip_and_no_router(tmp_path, trained_config):
    images = trained_config.home / "benchmarks/builtin/fake"
    summary = route(trained_config, [images], tmp_path / "out", expert="residual", show_progress=False)
    rows = read_jsonl(tmp_path / "out" / RESULTS_JSONL)
    assert summary.embedded == 0 and all(row["features"] is None for row in rows)
    assert {row["routing"]["router_id"] for row in rows} == {"fixed:residual"}
    assert "uncalibrated" in rows[0]["reason"]


def test_manifest_input_and_missing_paths(tmp_path, trained_config):
    real = sorted((trained_config.home / "benchmarks/builtin/real").glob("*.png"))[:3]
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,subject\n" + "".join(f"{p},x\n" for p in real) + "nowhere.png,y\n")
    route(trained_config, [tmp_path / "absent"], tmp_path / "out", manifests=[manifest], show_progress=False)
    rows = read_jsonl(tmp_path / "out" / RESULTS_JSONL)
    codes = [row["error"]["code"] if row["error"] else None for row in rows]
    assert codes == ["not_found", None, None, None, "not_found"]


def test_cli_reports_a_bad_configuration_with_key_and_source(tmp_path, trained_config):
    result = subprocess.run(
        [*COE, "route", str(tmp_path), *cli_settings(trained_config, "features.batchsize=3")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "--set features.batchsize=3: features.batchsize: unknown key" in result.stderr


def test_first_use_builds_the_default_models_once_and_says_so(tmp_path, tiny_clip):
    from conftest import tiny_config
    from rich.console import Console

    config = tiny_config(tmp_path / "fresh-home", tiny_clip)
    images = tmp_path / "in"
    make_mixed_folder(images)
    console = Console(record=True, width=200)
    first = route(config, [images], tmp_path / "out1", console=console, show_progress=False)
    assert "first use: no default models" in console.export_text()
    assert (config.home / "routers/default/v1/router.json").exists()
    assert all((config.home / "experts" / name / "meta.json").exists() for name in config.experts)
    assert first.analysed > 0
    again = Console(record=True, width=200)
    route(config, [images], tmp_path / "out2", console=again, show_progress=False)
    assert "first use" not in again.export_text()
