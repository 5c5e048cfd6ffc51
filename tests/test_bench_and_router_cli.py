"""`coe bench run` and `coe router train | eval | calibrate` end to end: real image files, the real
CLI, the small trained home of the test session, outcome tables in Parquet."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from benchmarks.outcomes import OUTCOME_COLUMNS, read_outcomes
from benchmarks.runner import METRICS_FILE, OUTCOMES_FILE, PARTS_DIR
from coe.defaults import DEFAULT_OUTCOMES, DEFAULT_ROUTER, DEFAULT_SPLIT
from router.artifact import read_router_meta, read_training_samples

COE = [sys.executable, "-m", "coe"]


def settings(config, *extra: str) -> list[str]:
    pairs = [f"home={config.home}", f"features.weights={config.features.weights}", *extra]
    return [item for pair in pairs for item in ("--set", pair)]


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*COE, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines


def folder_benchmark(tmp_path: Path, home: Path) -> Path:
    """A `real/ fake/` folder benchmark from the built-in images, plus one broken file."""
    root = tmp_path / "folderbench"
    builtin = home / "benchmarks/builtin"
    for label, pattern in (("real", "real/*.png"), ("fake", "fake/*/*.png")):
        (root / label).mkdir(parents=True)
        for image in sorted(builtin.glob(pattern))[:6]:
            shutil.copy(image, root / label / f"{image.parent.name}-{image.name}")
    (root / "fake" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    definition = tmp_path / "folderbench.yaml"
    definition.write_text(yaml.safe_dump({"name": "folderbench", "reader": "folder", "root": str(root)}))
    return definition


def test_bench_run_writes_outcomes_and_metrics_under_perturbations(tmp_path, trained_config):
    definition = folder_benchmark(tmp_path, trained_config.home)
    out = tmp_path / "bench"
    result = run("bench", "run", "builtin", definition, "--perturb", "none", "--perturb", "jpeg:60", "--out", out,
                 "--no-progress", *settings(trained_config, "run.chunk_size=16"))
    assert result.returncode == 0, result.stderr
    frame = read_outcomes([out / OUTCOMES_FILE])
    assert tuple(frame.columns) == OUTCOME_COLUMNS
    builtin_images = frame.loc[frame["benchmark"] == "builtin", "path"].nunique()
    assert set(frame.loc[frame["benchmark"] == "builtin", "split"]) == {"router_train", "test"}
    assert len(frame) == (builtin_images + 13) * 2 * 3  # images x perturbations x experts
    assert frame.groupby(["benchmark", "path", "perturbation", "expert"]).size().max() == 1
    broken = frame[frame["path"].str.endswith("broken.png")]
    assert len(broken) == 6 and broken["p_fake"].isna().all() and broken["error"].str.startswith("corrupt").all()
    judged = frame[frame["error"].isna()]
    assert judged["p_fake"].between(0, 1).all() and (judged["correct"] == (judged["verdict"] == judged["label"])).all()
    # jpeg:60 changes what the experts see, so some p_fake moves
    pivot = judged.pivot_table(index=["path", "expert"], columns="perturbation", values="p_fake")
    assert (pivot["none"] - pivot["jpeg:60"]).abs().max() > 1e-3
    metrics = pd.read_csv(out / METRICS_FILE)
    assert set(metrics["group_by"]) == {"all", "subject", "generator"}
    overall = metrics[(metrics["group_by"] == "all") & (metrics["benchmark"] == "folderbench")]
    assert len(overall) == 6 and (overall["failed"] == 1).all() and (overall["n"] == 12).all()
    assert {"ap", "auc", "accuracy", "accuracy_best", "tpr", "tnr", "ece", "pd_at_far_5"} <= set(metrics.columns)
    assert "folderbench" in result.stdout and "outcomes:" in flat(result.stderr)


def test_bench_run_resumes_after_a_kill_without_redoing_a_part(tmp_path, trained_config):
    out = tmp_path / "bench"
    command = [*COE, "bench", "run", "builtin", "--out", str(out), "--no-progress",
               *settings(trained_config, "run.chunk_size=4")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((out / PARTS_DIR).rglob("*.parquet"))) < 3:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    parts_before = {p: p.stat().st_mtime_ns for p in (out / PARTS_DIR).rglob("*.parquet")}
    assert parts_before and not (out / OUTCOMES_FILE).exists()

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {len(parts_before)} of" in flat(resumed.stderr)
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in parts_before.items())  # nothing redone
    frame = read_outcomes([out / OUTCOMES_FILE])
    reference = read_outcomes([trained_config.home / DEFAULT_OUTCOMES / OUTCOMES_FILE])
    key = ["path", "expert"]
    assert len(frame) == len(reference) and not frame.duplicated(key).any()  # nothing lost, nothing twice
    merged = frame.merge(reference, on=key, suffixes=("", "_ref"))
    assert np.allclose(merged["p_fake"], merged["p_fake_ref"])

    other = run("bench", "run", "builtin", "--out", out, "--perturb", "blur:1", *settings(trained_config))
    assert other.returncode == 2 and "--restart" in flat(other.stderr)


def test_unknown_benchmark_and_malformed_benchmark_are_clear_errors(tmp_path, trained_config):
    unknown = run("bench", "run", "nosuch", "--out", tmp_path / "b", *settings(trained_config))
    assert unknown.returncode == 2 and "no benchmark named 'nosuch'" in flat(unknown.stderr)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "list.csv").write_text("path,label\nmissing.png,fake\n")
    definition = tmp_path / "m.yaml"
    definition.write_text(yaml.safe_dump(
        {"name": "m", "reader": "manifest", "root": str(tmp_path / "m"), "annotations": "list.csv"}
    ))
    malformed = run("bench", "run", definition, "--out", tmp_path / "b", *settings(trained_config))
    assert malformed.returncode == 2 and "list.csv line 2" in flat(malformed.stderr)
    assert "Traceback" not in malformed.stderr


@pytest.fixture(scope="module")
def default_outcomes(trained_home) -> Path:
    return trained_home / DEFAULT_OUTCOMES / OUTCOMES_FILE


@pytest.mark.parametrize("level", ["query", "subject"])
def test_router_train_eval_calibrate_and_route_with_the_new_artifact(tmp_path, trained_config, default_outcomes, level):
    routers = tmp_path / "routers"
    train = ["router", "train", default_outcomes, "--level", level, "--out", routers, "--train-split", "router_train",
             "--test-split", "test", "--min-support", "5", "--no-progress", *settings(trained_config)]
    first = run(*train)
    assert first.returncode == 0, first.stderr
    text = flat(first.stdout)
    for system in ("spectrum", "dct", "residual", "random", "merged", "routed", "oracle"):
        assert f"│ {system} " in first.stdout
    assert "oracle gap closed" in text and "AIQ" in text and "accuracy per generator" in text
    meta = read_router_meta(routers)
    assert meta.level == level and meta.version == 1 and meta.trained_on[0].path == str(default_outcomes)
    assert 0.0 <= meta.metrics["accuracy"] <= 1.0 and meta.metrics["n_images"] > 0
    assert (routers / "v1" / "evaluation" / "cost_accuracy.png").exists()
    assert run(*train).returncode == 0 and read_router_meta(routers).version == 2  # retraining: a new version

    evaluation = run("router", "eval", routers, "--outcomes", default_outcomes, "--split", "test", "--out",
                     tmp_path / "eval", "--no-progress", *settings(trained_config))
    assert evaluation.returncode == 0, evaluation.stderr
    headline = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert headline["accuracy"] == pytest.approx(meta.metrics["accuracy"])  # same router, same held-out samples
    assert headline["training_samples_left_out"] == 0 and "left out" not in flat(evaluation.stdout)
    with Image.open(tmp_path / "eval" / "cost_accuracy.png") as png:
        assert png.size[0] > 300 and len(np.unique(np.asarray(png.convert("L")))) > 10

    systems = pd.read_csv(tmp_path / "eval" / "systems.csv", index_col="system")
    coverage = pd.read_csv(tmp_path / "eval" / "coverage.csv", index_col="system")
    assert list(coverage.columns) == ["100%", "80%", "60%", "40%", "20%"]
    assert coverage.loc["routed", "100%"] == pytest.approx(systems.loc["routed", "accuracy"])  # all answered
    assert "accuracy where each system is surest" in flat(evaluation.stdout)
    budget = float(systems.loc[["spectrum", "dct", "residual"], "cost"].min()) + 0.2
    calibrated = run("router", "calibrate", routers, "--outcomes", default_outcomes, "--budget", budget,
                     "--split", "router_train", "--no-progress", *settings(trained_config))
    assert calibrated.returncode == 0, calibrated.stderr
    reference = len(read_training_samples(routers).keys)  # router_train is the training side
    assert f"{reference} of {reference} reference sample(s) show images the router was trained on" in flat(
        calibrated.stderr
    )
    achieved = float(flat(calibrated.stderr).split("mean cost ")[1].split()[0])
    assert achieved <= budget and read_router_meta(routers).budget == budget and read_router_meta(routers).version == 3

    routed = run("route", trained_config.home / "benchmarks/builtin/real", "--router", routers, "--out",
                 tmp_path / "route", "--no-progress", *settings(trained_config))
    assert routed.returncode == 0, routed.stderr
    rows = [json.loads(line) for line in (tmp_path / "route" / "results.jsonl").read_text().splitlines()]
    assert all(row["routing"]["level"] == level and row["routing"]["router_id"].endswith("/v3") for row in rows)
    if level == "subject":
        assert all(row["routing"]["subject"] for row in rows)


def test_router_eval_leaves_out_the_images_the_router_was_trained_on(tmp_path, trained_config, default_outcomes):
    """The README's sequence: a router holding out a share of images by hash, judged on `--split test`."""
    routers = tmp_path / "hashed"
    trained = run("router", "train", default_outcomes, "--out", routers, "--no-progress", *settings(trained_config))
    assert trained.returncode == 0, trained.stderr
    training_ids = read_training_samples(routers).image_ids
    outcomes = read_outcomes([default_outcomes])
    test_ids = set(outcomes.loc[outcomes["split"] == "test", "image_id"])
    seen, unseen = test_ids & training_ids, test_ids - training_ids
    assert seen and unseen  # the hash share puts test images on both sides

    evaluation = ["router", "eval", routers, "--outcomes", default_outcomes, "--split", "test", "--no-progress",
                  *settings(trained_config)]
    held_out = run(*evaluation, "--out", tmp_path / "held-out")
    assert held_out.returncode == 0, held_out.stderr
    headline = json.loads((tmp_path / "held-out" / "evaluation.json").read_text())
    assert headline["n_images"] == len(unseen) and headline["training_samples_left_out"] == len(seen)
    assert f"{len(seen)} sample(s) left out: their images trained the router" in flat(held_out.stdout)
    assert f"({len(unseen)} images)" in flat(held_out.stdout)
    with_training = run(*evaluation, "--out", tmp_path / "all", "--include-training")
    assert with_training.returncode == 0, with_training.stderr
    everything = json.loads((tmp_path / "all" / "evaluation.json").read_text())
    assert everything["n_images"] == len(test_ids) and everything["training_samples_judged"] == len(seen)
    assert f"{len(seen)} of these {len(test_ids)} samples show images the router was trained on" in flat(
        with_training.stdout
    )
    sides = pd.read_csv(tmp_path / "all" / "by_router_side.csv", index_col="router_side")
    assert sides.loc["held out", "n"] == len(unseen) and sides.loc["trained on", "n"] == len(seen)
    assert sides.loc["held out", "routed"] == pytest.approx(headline["accuracy"])


def test_router_eval_on_nothing_but_training_images_says_what_to_do(tmp_path, trained_config, default_outcomes):
    result = run("router", "eval", trained_config.home / DEFAULT_ROUTER, "--outcomes", default_outcomes, "--split",
                 "router_train", "--out", tmp_path / "eval", "--no-progress", *settings(trained_config))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = flat(result.stderr)
    n_train = read_router_meta(trained_config.home / DEFAULT_ROUTER).n_train
    assert f"all {n_train} samples to judge show images router" in message
    assert "--split test" in message and "--include-training" in message
    assert not (tmp_path / "eval").exists()


def test_out_of_distribution_split_is_reported_as_such(tmp_path, trained_config, default_outcomes):
    result = run("router", "train", default_outcomes, "--out", tmp_path / "ood", "--train-split", "router_train",
                 "--test-split", "test", "--test-generator", "inpaint_local", "--no-progress", *settings(trained_config))
    assert result.returncode == 0, result.stderr
    assert "out-of-distribution held-out side" in flat(result.stdout)
    by_generator = pd.read_csv(tmp_path / "ood" / "v1" / "evaluation" / "by_generator.csv", index_col="generator")
    assert set(by_generator.index) == {"real", "inpaint_local"}
    assert read_router_meta(tmp_path / "ood").split["test_generators"] == ["inpaint_local"]


def test_an_artifact_for_experts_no_longer_configured_is_refused_with_what_to_do(tmp_path, trained_config):
    fewer = ["experts=[dct,residual]", "features.descriptors=[dct,residual]"]
    result = run("route", trained_config.home / "benchmarks/builtin/real", "--router",
                 trained_config.home / "routers/default", "--out", tmp_path / "r", *settings(trained_config, *fewer))
    assert result.returncode == 2
    message = flat(result.stderr)
    assert "not configured any more: ['spectrum']" in message and "coe bench run" in message
    assert "coe router train" in message


def test_outcomes_of_a_retrained_expert_are_refused(tmp_path, trained_config, default_outcomes):
    home = tmp_path / "home"
    shutil.copytree(trained_config.home, home, ignore=shutil.ignore_patterns("features.sqlite"))
    data = tmp_path / "data"
    for label, pattern in (("real", "real/*.png"), ("fake", "fake/*/*.png")):
        (data / label).mkdir(parents=True)
        for image in sorted((home / "benchmarks/builtin").glob(pattern))[:10]:
            shutil.copy(image, data / label / f"{image.parent.name}-{image.name}")
    copied = trained_config.model_copy(update={"home": home})
    assert run("experts", "train", "dct", "--data", data, *settings(copied)).returncode == 0
    result = run("router", "train", default_outcomes, "--out", tmp_path / "r", *settings(copied))
    assert result.returncode == 2
    message = flat(result.stderr)
    assert str(default_outcomes) in message and "'dct'" in message and "run `coe bench run` again" in message


def test_abstaining_router_answers_uncertain_or_escalates_as_configured(tmp_path, trained_config, default_outcomes):
    from coe.pipeline import route
    from coe.routing import train_router_from_outcomes

    cautious = trained_config.model_copy(deep=True)
    cautious.router.abstain_below = 0.95
    folder, _, _ = train_router_from_outcomes(cautious, [default_outcomes], tmp_path / "cautious",
                                              split=DEFAULT_SPLIT, show_progress=False)
    images = [trained_config.home / "benchmarks/builtin/fake"]
    answers = {}
    for action in ("uncertain", "escalate"):
        settings = trained_config.model_copy(deep=True)
        settings.router.path, settings.router.on_abstain = folder, action
        route(settings, images, tmp_path / action, show_progress=False)
        answers[action] = [json.loads(line) for line in (tmp_path / action / "results.jsonl").read_text().splitlines()]
    abstained = [row for row in answers["uncertain"] if row["routing"]["abstained"]]
    assert abstained and all(row["label"] == "uncertain" and len(row["expert_outputs"]) == 1 for row in abstained)
    escalated = [row for row in answers["escalate"] if row["routing"]["abstained"]]
    assert len(escalated) == len(abstained)
    for row in escalated:
        consulted = [output["expert"] for output in row["expert_outputs"]]
        assert consulted == [row["routing"]["chosen"], *row["routing"]["escalated_to"]] and len(consulted) == 2
        assert row["decided_by"] == "+".join(consulted) and "escalated" in row["reason"]
    assert any(row["label"] != "uncertain" for row in escalated)
