"""`coe route --ray`: the same run on Ray workers (a local cluster on loopback only) gives the
same verdicts as a local run, path for path, duplicates and bad files included, and resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bad_files import TEST_LIMITS, make_mixed_folder
from ray_sockets import assert_ray_listens_on_loopback_only
from coe.config import load_config
from coe.ledger import LEDGER_FILE
from coe.pipeline import route
from coe.results import RESULTS_JSONL

SETTINGS = [
    f"ingest.max_file_bytes={TEST_LIMITS.max_file_bytes}", f"ingest.max_pixels={TEST_LIMITS.max_pixels}",
    "run.chunk_size=7",  # several chunks, so duplicates span chunks analysed by different workers
]


def comparable(out: Path) -> dict[str, tuple]:
    rows = [json.loads(line) for line in (out / RESULTS_JSONL).read_text().splitlines()]
    return {
        row["path"]: (
            row["image_id"], row["label"], None if row["p_fake"] is None else round(row["p_fake"], 9),
            row["decided_by"], row["duplicate_of"], row["error"] and row["error"]["code"],
            row["routing"] and row["routing"]["chosen"], row["explanation"],
        )
        for row in rows
    }


@pytest.fixture(scope="module")
def ray_cluster():
    from coe.ray_route import ray_session

    with ray_session("local"):
        yield


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mixed")
    make_mixed_folder(folder)
    return folder


def test_ray_and_local_runs_give_the_same_verdicts_and_a_ray_run_resumes(
    tmp_path, trained_config, mixed_folder, ray_cluster
):
    config = load_config(overrides=[
        f"home={trained_config.home}", f"features.weights={trained_config.features.weights}", *SETTINGS,
    ])
    local = route(config, [mixed_folder], tmp_path / "local", show_progress=False)
    on_ray = route(config, [mixed_folder], tmp_path / "ray", show_progress=False, ray_address="auto")
    assert comparable(tmp_path / "ray") == comparable(tmp_path / "local")
    assert (on_ray.paths, on_ray.duplicates, on_ray.errors) == (local.paths, local.duplicates, local.errors)
    assert local.duplicates >= 1 and len(local.errors) >= 10

    # An interrupted Ray run (half its ledger) resumes without redoing or dropping a path.
    ledger = tmp_path / "ray" / LEDGER_FILE
    lines = ledger.read_text().splitlines(keepends=True)
    ledger.write_text("".join(lines[: len(lines) // 2]))
    (tmp_path / "ray" / RESULTS_JSONL).unlink()
    resumed = route(config, [mixed_folder], tmp_path / "ray", show_progress=False, ray_address="auto")
    assert resumed.done_before == len(lines) // 2
    assert comparable(tmp_path / "ray") == comparable(tmp_path / "local")
    assert len(ledger.read_text().splitlines()) == len(lines)


def test_the_cluster_listens_on_loopback_only(ray_cluster):
    assert_ray_listens_on_loopback_only()


def test_the_cli_runs_on_a_cluster_it_starts_itself(tmp_path, trained_config, mixed_folder):
    out = tmp_path / "cli"
    command = [
        sys.executable, "-m", "coe", "route", str(mixed_folder), "--out", str(out), "--ray", "local", "--no-progress",
        "--set", f"home={trained_config.home}", "--set", f"features.weights={trained_config.features.weights}",
        *(item for setting in SETTINGS for item in ("--set", setting)),
    ]
    # A TMPDIR of its own, short: Ray's socket paths under it must stay under 108 bytes.
    with tempfile.TemporaryDirectory(prefix="coe-t-") as temp_root:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": temp_root}
        )
        assert result.returncode == 0, result.stderr
        assert os.listdir(temp_root) == []  # the cluster's session files went with it
    local = tmp_path / "local"
    route(load_config(overrides=[
        f"home={trained_config.home}", f"features.weights={trained_config.features.weights}", *SETTINGS,
    ]), [mixed_folder], local, show_progress=False)
    assert comparable(out) == comparable(local)
