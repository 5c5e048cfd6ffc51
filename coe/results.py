"""Result files (results.jsonl, results.csv) and the end-of-run summary."""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from coe.core.records import Verdict

RESULTS_JSONL = "results.jsonl"
RESULTS_CSV = "results.csv"
REPORT_FILE = "report.html"  # every report page: coe.reports.run_report and coe.reports.pages
CSV_COLUMNS = [
    "path", "image_id", "label", "p_fake", "decided_by", "reason", "explanation", "artifacts", "mask_file",
    "error_code", "error_message",
    "width", "height", "format", "duplicate_of", "router", "features", "random_weights",
]


def _csv_row(verdict: Verdict) -> dict[str, object]:
    return {
        "path": verdict.path,
        "image_id": verdict.image_id,
        "label": verdict.label,
        "p_fake": None if verdict.p_fake is None else round(verdict.p_fake, 6),
        "decided_by": verdict.decided_by,
        "reason": verdict.reason,
        "explanation": verdict.explanation,
        "artifacts": " | ".join(
            f"{artifact.category}: {artifact.phrase}"
            for evidence in [*verdict.expert_outputs, *([verdict.localization] if verdict.localization else [])]
            for artifact in evidence.artifacts
        ) or None,
        "mask_file": verdict.mask_file,
        "error_code": verdict.error.code.value if verdict.error else None,
        "error_message": verdict.error.message if verdict.error else None,
        "width": verdict.image.width if verdict.image else None,
        "height": verdict.image.height if verdict.image else None,
        "format": verdict.image.format if verdict.image else None,
        "duplicate_of": verdict.duplicate_of,
        "router": verdict.routing.router_id if verdict.routing else None,
        "features": verdict.features,
        "random_weights": verdict.random_weights,
    }


def _replace(path: Path, text: str) -> None:
    """Write beside, then rename: readers never see a half-written results file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8", newline="")
    os.replace(partial, path)


def write_results(out_dir: Path, verdicts: Sequence[Verdict]) -> None:
    _replace(out_dir / RESULTS_JSONL, "".join(verdict.model_dump_json() + "\n" for verdict in verdicts))
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(_csv_row(verdict) for verdict in verdicts)
    _replace(out_dir / RESULTS_CSV, table.getvalue())


class RunSummary(BaseModel):
    out_dir: str
    paths: int
    done_before: int
    analysed: int
    duplicates: int
    embedded: int
    labels: dict[str, int]
    errors: dict[str, int]
    experts: dict[str, int]
    seconds: float
    setup_seconds: float
    paths_per_second: float
    random_weights: bool


def summarize(
    verdicts: Sequence[Verdict], out_dir: Path, seconds: float, setup_seconds: float, done_before: int, embedded: int
) -> RunSummary:
    routing_seconds = seconds - setup_seconds
    ok = [v for v in verdicts if v.error is None]
    return RunSummary(
        out_dir=str(out_dir),
        paths=len(verdicts),
        done_before=done_before,
        analysed=sum(v.duplicate_of is None for v in ok),
        duplicates=sum(v.duplicate_of is not None for v in ok),
        embedded=embedded,
        labels=dict(Counter(v.label for v in ok)),
        errors=dict(Counter(v.error.code.value for v in verdicts if v.error)),
        experts=dict(Counter(v.decided_by for v in ok if v.duplicate_of is None)),
        seconds=seconds,
        setup_seconds=setup_seconds,
        paths_per_second=(len(verdicts) - done_before) / routing_seconds if routing_seconds > 0 else 0.0,
        random_weights=any(v.random_weights for v in verdicts),
    )


def render_summary(summary: RunSummary, console: Console) -> None:
    table = Table(title=f"coe route: {summary.paths} paths -> {summary.out_dir}")
    table.add_column("what")
    table.add_column("count", justify="right")
    for label in ("real", "fake", "uncertain"):
        table.add_row(f"verdict {label}", str(summary.labels.get(label, 0)))
    for code, count in sorted(summary.errors.items()):
        table.add_row(f"[red]error {code}", str(count))
    for expert, count in sorted(summary.experts.items()):
        table.add_row(f"decided by {expert}", str(count))
    table.add_row("distinct images analysed", str(summary.analysed))
    table.add_row("duplicates (same bytes)", str(summary.duplicates))
    table.add_row("done by an earlier attempt", str(summary.done_before))
    table.add_row("newly embedded (CLIP)", str(summary.embedded))
    table.add_row("loading models", f"{summary.setup_seconds:.1f} s")
    table.add_row("routing", f"{summary.seconds - summary.setup_seconds:.1f} s ({summary.paths_per_second:.1f} paths/s)")
    console.print(table)
    out_dir = Path(summary.out_dir)
    console.print(f"results: {out_dir / RESULTS_JSONL} and {out_dir / RESULTS_CSV}; report: {out_dir / REPORT_FILE}")
    if summary.random_weights:
        console.print(
            "[bold red]Routing used CLIP features with RANDOM weights (no pretrained weights were available): "
            "fine for tests and the offline demo, not for real decisions. Set features.weights."
        )
