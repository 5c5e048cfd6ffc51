"""Outcome tables (schema, pivot, splits that keep each image on one side) and routing evaluation
on hand-made outcomes whose right answers are known."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from benchmarks.outcomes import (
    OUTCOME_COLUMNS,
    OutcomeMatrix,
    OutcomeTableError,
    SplitSpec,
    image_file,
    read_outcomes,
    schema_markdown,
    split_samples,
    write_outcomes,
)
from benchmarks.routing_eval import evaluate_routing, write_evaluation


def outcome_rows(n_images: int = 40, experts=("a", "b"), perturbations=("none",)) -> list[dict]:
    rows = []
    for i in range(n_images):
        label = "fake" if i % 2 else "real"
        for perturbation in perturbations:
            for expert in experts:
                p_fake = 0.9 if label == "fake" else 0.1
                rows.append({
                    "benchmark": "toy", "split": "test" if i >= 30 else "train", "image_id": f"{i:064x}",
                    "path": f"/data/{i}.png", "label": label, "subject": "face" if i < 20 else "scene",
                    "generator": ("gan" if i % 4 == 1 else "diffusion") if label == "fake" else "real",
                    "perturbation": perturbation, "expert": expert, "expert_identity": "1:abc", "p_fake": p_fake,
                    "verdict": "fake" if p_fake >= 0.5 else "real", "correct": True, "latency_ms": 1.0, "cost": 1.0,
                })
    return rows


def test_tables_round_trip_with_the_documented_schema(tmp_path):
    rows = outcome_rows()
    rows[0].update(p_fake=None, verdict=None, correct=None, error="expert_failed: boom")
    write_outcomes(rows, tmp_path / "o.parquet")
    frame = read_outcomes([tmp_path / "o.parquet", tmp_path / "o.parquet"])
    assert tuple(frame.columns) == OUTCOME_COLUMNS and len(frame) == 2 * len(rows)
    assert frame["p_fake"].isna().sum() == 2 and frame.loc[0, "error"] == "expert_failed: boom"
    assert all(f"`{column}`" in schema_markdown() for column in OUTCOME_COLUMNS)
    assert schema_markdown() in (Path(__file__).parents[1] / "README.md").read_text()  # the docs cannot drift
    assert not list(tmp_path.glob(".*partial*"))


def test_a_file_name_that_is_not_utf8_is_kept_exactly_and_its_text_written_readably(tmp_path):
    rows = outcome_rows(n_images=2)
    odd = os.fsdecode(b"/data/caf\xe9 \xff.png")
    for row in rows[:2]:
        row.update(path=odd, generator=os.fsdecode(b"gen\xfe"), error=f"{odd}: truncated")
    write_outcomes(rows, tmp_path / "o.parquet")
    written = pq.read_table(tmp_path / "o.parquet").to_pylist()
    assert written[0]["path"] == "/data/caf\\xe9 \\xff.png" and written[0]["path_bytes"] == b"/data/caf\xe9 \xff.png"
    assert written[0]["generator"] == "gen\\xfe" and written[2]["path_bytes"] is None
    frame = read_outcomes([tmp_path / "o.parquet"])
    opened = [image_file(path, exact) for path, exact in zip(frame["path"], frame["path_bytes"], strict=True)]
    assert opened == [odd, odd, "/data/1.png", "/data/1.png"]  # the exact file again
    write_outcomes(frame, tmp_path / "again.parquet")  # a frame read back writes the same table
    assert pq.read_table(tmp_path / "again.parquet").equals(pq.read_table(tmp_path / "o.parquet"))


def test_a_table_written_before_path_bytes_reads_with_it_null(tmp_path):
    write_outcomes(outcome_rows(n_images=2), tmp_path / "o.parquet")
    table = pq.read_table(tmp_path / "o.parquet")
    pq.write_table(table.drop_columns(["path_bytes"]), tmp_path / "old.parquet")
    frame = read_outcomes([tmp_path / "old.parquet"])
    assert frame["path_bytes"].isna().all() and list(frame["path"]) == ["/data/0.png"] * 2 + ["/data/1.png"] * 2


def test_a_file_that_is_not_an_outcome_table_is_named(tmp_path):
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(OutcomeTableError, match="junk.parquet: not a readable Parquet"):
        read_outcomes([tmp_path / "junk.parquet"])
    pd.DataFrame({"path": ["x"]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(OutcomeTableError, match="other.parquet: not an outcome table; missing columns"):
        read_outcomes([tmp_path / "other.parquet"])


def test_a_table_written_before_a_nullable_column_existed_still_reads(tmp_path):
    """Outcome tables written before `mask_file` existed train routers as before."""
    write_outcomes(outcome_rows(n_images=4), tmp_path / "new.parquet")
    pd.read_parquet(tmp_path / "new.parquet").drop(columns=["mask_file"]).to_parquet(tmp_path / "old.parquet")
    frame = read_outcomes([tmp_path / "old.parquet", tmp_path / "new.parquet"])
    assert tuple(frame.columns) == OUTCOME_COLUMNS and frame["mask_file"].isna().all() and len(frame) == 16
    pd.read_parquet(tmp_path / "new.parquet").drop(columns=["p_fake"]).to_parquet(tmp_path / "broken.parquet")
    with pytest.raises(OutcomeTableError, match=r"missing columns \['p_fake'\]"):
        read_outcomes([tmp_path / "broken.parquet"])


def test_matrix_pivots_per_sample_and_names_an_absent_expert():
    frame = pd.DataFrame(outcome_rows(perturbations=("none", "jpeg:75")))
    frame = frame[~((frame["image_id"] == f"{3:064x}") & (frame["expert"] == "b"))]  # b never saw image 3
    matrix = OutcomeMatrix.from_frame(frame, ["b", "a"])
    assert matrix.p_fake.shape == (2 * 40 - 2, 2) and matrix.experts == ["b", "a"]
    assert f"{3:064x}" not in set(matrix.samples["image_id"])
    assert matrix.is_fake.sum() == 2 * 20 - 2  # fake image 3 is left out under both perturbations
    with pytest.raises(OutcomeTableError, match=r"no outcomes of expert\(s\) \['c'\].*coe bench run"):
        OutcomeMatrix.from_frame(frame, ["a", "c"])


def samples_frame() -> pd.DataFrame:
    frame = pd.DataFrame(outcome_rows(n_images=400, perturbations=("none", "blur:1")))
    return OutcomeMatrix.from_frame(frame, ["a", "b"]).samples


def test_hash_holdout_keeps_every_image_on_one_side_whatever_its_perturbations():
    samples = samples_frame()
    train, test = split_samples(samples, SplitSpec(holdout=0.25))
    assert not (train & test).any() and (train | test).all()
    assert not set(samples.loc[train, "image_id"]) & set(samples.loc[test, "image_id"])
    assert 0.15 < test.mean() < 0.35
    again, _ = split_samples(samples, SplitSpec(holdout=0.25))
    other_seed, _ = split_samples(samples, SplitSpec(holdout=0.25, seed=1))
    assert (again == train).all() and (other_seed != train).any()


def test_named_splits_and_out_of_distribution_generators():
    samples = samples_frame()
    train, test = split_samples(samples, SplitSpec(train_splits=["train"], test_splits=["test"], test_generators=["gan"]))
    assert set(samples.loc[train, "split"]) == {"train"} and set(samples.loc[test, "split"]) == {"test"}
    assert set(samples.loc[train, "generator"]) == {"real", "diffusion"}
    assert set(samples.loc[test, "generator"]) == {"real", "gan"}


def test_held_out_benchmarks():
    frame = pd.DataFrame(outcome_rows())
    other = frame.assign(benchmark="other", image_id=frame["image_id"].str.replace("0", "f", n=1))
    samples = OutcomeMatrix.from_frame(pd.concat([frame, other]), ["a", "b"]).samples
    train, test = split_samples(samples, SplitSpec(test_benchmarks=["other"]))
    assert set(samples.loc[train, "benchmark"]) == {"toy"} and set(samples.loc[test, "benchmark"]) == {"other"}


def test_routing_evaluation_on_known_outcomes(tmp_path):
    """a is right on the first half, b on the second; c (cheap) on a quarter. A router that knows
    closes the whole gap; the oracle's cost is that of the cheapest right expert."""
    n = 200
    is_fake = np.tile([0, 1], n // 2)
    right = np.zeros((n, 3), dtype=bool)
    right[: n // 2, 0] = True
    right[n // 2 :, 1] = True
    right[::4, 2] = True
    p_fake = np.where(right, is_fake[:, None] * 0.8 + 0.1, 0.9 - is_fake[:, None] * 0.8)
    p_fake[5, 2] = np.nan  # c failed on one image: counted wrong
    chosen = np.where(np.arange(n) < n // 2, 0, 1)
    p_correct = right.astype(float)
    evaluation = evaluate_routing(
        p_fake, is_fake, ["a", "b", "c"], [4.0, 4.0, 1.0], p_correct, chosen,
        {"subject": ["x"] * n, "generator": ["g"] * n},
    )
    systems = evaluation.systems
    assert systems.loc["routed", "accuracy"] == 1.0 and systems.loc["a", "accuracy"] == 0.5
    assert systems.loc["routed", "oracle_gap_closed"] == pytest.approx(1.0)
    assert systems.loc["merged", "cost"] == 9.0 and systems.loc["routed", "cost"] == 4.0
    assert systems.loc["oracle", "cost"] == pytest.approx((50 * 1.0 + 150 * 4.0) / n)
    assert evaluation.best_single in {"a", "b"} and evaluation.headline()["oracle_accuracy"] == 1.0
    assert evaluation.breakdown["subject"].loc["x", "routed"] == 1.0
    assert 0.0 < evaluation.aiq <= 1.0 and evaluation.curve["cost"].min() <= 1.0 + 1e-9
    plots = write_evaluation(evaluation, tmp_path, "toy")
    assert all(png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for png in plots.values())
    assert {p.name for p in tmp_path.iterdir()} >= {"systems.csv", "by_subject.csv", "curve.csv", "evaluation.json"}
