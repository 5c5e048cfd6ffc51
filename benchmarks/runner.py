"""`coe bench run` as a Python API: every expert over every benchmark image, under each
perturbation, into an outcome table (`benchmarks.outcomes`) and per-expert metrics.

Work is cut into parts of `chunk_size` images of one benchmark under one perturbation; each part
is written atomically when all experts have judged it, so an interrupted run resumes at the
first missing part and never redoes or drops one. Bench-CoE runs expert by expert over a whole
split; here every expert sees a part in one batch, which keeps resumption fine-grained."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from pydantic import BaseModel
from rich.console import Console

from benchmarks.explanations import SentenceSimilarity, rouge_l
from benchmarks.metrics import grouped_detector_metrics, mask_scores
from benchmarks.outcomes import read_outcomes, write_outcomes
from benchmarks.perturbations import Perturbation
from benchmarks.readers import BenchmarkItem, BenchmarkSpec
from coe.core.console import plain_console, progress_bar, show
from coe.core.imaging import DecodedImage, DecodeLimits, decode_or_error, read_image
from coe.core.masks import MASKS_DIR, save_masks
from coe.core.records import ErrorCode, ErrorInfo, ExpertOutput
from coe.core.runs import check_run_identity
from experts.base import Expert, predict_each

RUN_FILE = "bench.json"
PARTS_DIR = "parts"
OUTCOMES_FILE = "outcomes.parquet"
METRICS_FILE = "metrics.csv"
QUALITY_COLUMNS = {"mask_iou": "miou", "mask_f1": "pixel_f1", "rouge_l": "rouge_l", "css": "css"}


@dataclass(frozen=True)
class ExpertUnderTest:
    name: str
    expert: Expert
    identity: str  # version and training-data hash, recorded on every row
    cost: float


@dataclass(frozen=True)
class LoadedBenchmark:
    spec: BenchmarkSpec
    items: list[BenchmarkItem]

    @property
    def digest(self) -> str:
        listing = "\n".join(f"{item.path}\t{item.label}\t{item.split}" for item in self.items)
        return hashlib.sha256(os.fsencode(listing)).hexdigest()[:16]  # file names are bytes, any bytes


class BenchRunSummary(BaseModel):
    out_dir: Path
    outcomes: Path
    metrics: Path
    n_rows: int
    n_images: int
    n_failed_rows: int
    parts_done_before: int
    parts_total: int
    overall: list[dict]  # per (benchmark, perturbation, expert): the headline metrics
    report: Path | None = None  # report.html, which `coe bench run` writes from these files


def run_benchmarks(
    experts: Sequence[ExpertUnderTest],
    benchmarks: Sequence[LoadedBenchmark],
    perturbations: Sequence[Perturbation],
    out_dir: Path,
    *,
    limits: DecodeLimits = DecodeLimits(),
    chunk_size: int = 32,
    decode_workers: int = 2,
    similarity: SentenceSimilarity | None = None,
    restart: bool = False,
    console: Console | None = None,
    show_progress: bool = True,
) -> BenchRunSummary:
    console = console or plain_console(stderr=True)
    identity = {
        "experts": {e.name: e.identity for e in experts},
        "benchmarks": {b.spec.name: b.digest for b in benchmarks},
        "perturbations": [p.name for p in perturbations],
        "chunk_size": chunk_size,
        "explanation_similarity": str(similarity.model_folder) if similarity else None,
    }
    check_run_identity(out_dir, RUN_FILE, identity, restart, discard=[PARTS_DIR, OUTCOMES_FILE, METRICS_FILE, MASKS_DIR])
    work = [
        (benchmark, perturbation, start, _part_path(out_dir, benchmark.spec.name, perturbation, start))
        for benchmark in benchmarks
        for perturbation in perturbations
        for start in range(0, len(benchmark.items), chunk_size)
    ]
    done_before = sum(part.exists() for *_, part in work)
    if done_before:
        show(console, f"resuming: {done_before} of {len(work)} parts were done by an earlier attempt")
    progress = progress_bar(console, show=show_progress)
    total_images = sum(len(b.items) for b in benchmarks) * len(perturbations)
    with progress, ThreadPoolExecutor(decode_workers) as decoders:
        task = progress.add_task("bench run", total=total_images)
        for benchmark, perturbation, start, part in work:
            items = benchmark.items[start : start + chunk_size]
            if not part.exists():
                progress.update(task, description=f"{benchmark.spec.name} / {perturbation.name}")
                rows = _judge_part(
                    benchmark.spec.name, items, perturbation, experts, decoders, limits, similarity, out_dir
                )
                write_outcomes(rows, part)
            progress.advance(task, len(items))

    outcomes = read_outcomes([part for *_, part in work])
    write_outcomes(outcomes, out_dir / OUTCOMES_FILE)
    metrics = expert_metrics(outcomes)
    metrics.to_csv(out_dir / METRICS_FILE, index=False)
    headline = metrics[metrics["group_by"] == "all"]
    return BenchRunSummary(
        out_dir=out_dir,
        outcomes=out_dir / OUTCOMES_FILE,
        metrics=out_dir / METRICS_FILE,
        n_rows=len(outcomes),
        n_images=outcomes["image_id"].nunique(),
        n_failed_rows=int(outcomes["error"].notna().sum()),
        parts_done_before=done_before,
        parts_total=len(work),
        overall=headline.drop(columns=["group_by", "group"]).to_dict("records"),
    )


def _part_path(out_dir: Path, benchmark: str, perturbation: Perturbation, start: int) -> Path:
    return out_dir / PARTS_DIR / benchmark / perturbation.name.replace(":", "_") / f"{start:08d}.parquet"


def _judge_part(
    benchmark: str,
    items: list[BenchmarkItem],
    perturbation: Perturbation,
    experts: Sequence[ExpertUnderTest],
    decoders: ThreadPoolExecutor,
    limits: DecodeLimits,
    similarity: SentenceSimilarity | None,
    out_dir: Path,
) -> list[dict]:
    def decode(item: BenchmarkItem) -> DecodedImage | ErrorInfo:
        return decode_or_error(item.path, lambda: read_image(item.path, limits))

    decoded = list(decoders.map(decode, items))
    good = [i for i, result in enumerate(decoded) if isinstance(result, DecodedImage)]
    pixels = {i: perturbation.apply(decoded[i].pixels) for i in good}
    rows = []
    for entry in experts:
        outputs = dict(zip(good, predict_each(entry.expert, [pixels[i] for i in good]), strict=True))
        for i, item in enumerate(items):
            result = decoded[i]
            row = {
                "benchmark": benchmark, "split": item.split, "path": str(item.path), "label": item.label,
                "subject": item.subject, "generator": item.generator, "perturbation": perturbation.name,
                "expert": entry.name, "expert_identity": entry.identity, "cost": entry.cost,
                "image_id": result.record.id if isinstance(result, DecodedImage) else _id_of_unreadable(item),
            }
            output = outputs.get(i, result)
            if isinstance(output, ErrorInfo):
                row["error"] = f"{output.code.value}: {output.message}"
            else:
                mask_key = f"{benchmark}/{perturbation.name.replace(':', '_')}/{result.record.id[:16]}"
                save_masks(output, out_dir, mask_key)
                row.update(_scores(item, output, result.pixels.shape[:2], perturbation, out_dir))
            rows.append(row)
    if similarity is not None:
        scored = [row for row in rows if row.get("rouge_l") is not None]
        references = {str(item.path): item.explanation for item in items}
        values = similarity.similarity([r["explanation"] for r in scored], [references[r["path"]] for r in scored])
        for row, value in zip(scored, values, strict=True):
            row["css"] = float(value)
    return rows


def _id_of_unreadable(item: BenchmarkItem) -> str:
    """A file that cannot be read has no content hash; its path stands in, marked as such."""
    return "unreadable:" + hashlib.sha256(str(item.path).encode()).hexdigest()


def _scores(
    item: BenchmarkItem, output: ExpertOutput, size: tuple[int, int], perturbation: Perturbation, out_dir: Path
) -> dict:
    scores = {
        "p_fake": output.p_fake, "verdict": output.label, "correct": output.label == item.label,
        "latency_ms": output.latency_ms, "explanation": output.explanation, "mask_file": output.union_mask_file,
    }
    truth = item.ground_truth_mask(size)
    if truth is not None and output.union_mask_file:
        truth = perturbation.apply_to_mask(truth)
        try:
            with Image.open(out_dir / output.union_mask_file) as mask:
                predicted = mask.convert("L").resize((truth.shape[1], truth.shape[0]), Image.Resampling.NEAREST)
        except OSError as error:  # the expert's mask file is unusable: its verdict still counts
            scores["error"] = f"{ErrorCode.EXPERT_FAILED.value}: mask {output.union_mask_file}: {error}"
        else:
            quality = mask_scores(np.asarray(predicted) > 0, truth)
            scores.update(mask_iou=quality["iou"], mask_f1=quality["f1"])
    if output.explanation and item.explanation:
        scores["rouge_l"] = rouge_l(output.explanation, item.explanation)
    return scores


def read_metrics(path: Path) -> pd.DataFrame:
    """A metrics table as `run_benchmarks` wrote it: names stay text (a subject called "NA" or
    "2024" is not a missing value or a number); only empty cells are missing numbers."""
    names = dict.fromkeys(("benchmark", "perturbation", "expert", "group_by", "group"), str)
    return pd.read_csv(path, dtype=names, keep_default_na=False, na_values=[""])


def expert_metrics(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Per (benchmark, perturbation, expert): the detector metrics overall, per subject and per
    generator, with localisation and explanation means where they exist, failures and cost."""
    judged = outcomes[outcomes["p_fake"].notna()]
    base = ["benchmark", "perturbation", "expert"]
    tables = []
    for group_by in ("all", "subject", "generator"):
        keys = base if group_by == "all" else [*base, group_by]
        detection = grouped_detector_metrics(judged, keys)
        quality = judged.groupby(keys)[list(QUALITY_COLUMNS)].mean().rename(columns=QUALITY_COLUMNS)
        extra = outcomes.groupby(keys).agg(
            failed=("error", lambda errors: int(errors.notna().sum())),
            latency_ms=("latency_ms", "mean"),
            cost=("cost", "first"),
        )
        table = detection.merge(quality.join(extra).reset_index(), on=keys, how="right")
        table.insert(len(base), "group_by", group_by)
        table.insert(len(base) + 1, "group", "all" if group_by == "all" else table.pop(group_by))
        tables.append(table)
    return pd.concat(tables, ignore_index=True)
