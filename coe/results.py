"""Result files (results.jsonl, results.csv) and the end-of-run summary."""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table
from rich.text import Text

from coe.core.console import show
from coe.core.names import exact_bytes, readable
from coe.core.records import EvidenceGrade, Verdict

RESULTS_JSONL = "results.jsonl"
RESULTS_CSV = "results.csv"
REPORT_FILE = "report.html"  # every report page: coe.reports.run_report and coe.reports.pages
CSV_COLUMNS = [
    "path", "path_bytes", "image_id", "label", "p_fake", "decided_by", "reason", "explanation", "artifacts", "mask_file",
    "provenance_grade", "provenance_says", "provenance_source", "provenance_generator", "provenance_signer",
    "error_code", "error_message",
    "width", "height", "format", "duplicate_of", "router", "features", "random_weights",
]


def _csv_row(verdict: Verdict) -> dict[str, object]:
    """Cells as valid UTF-8 text (coe.core.names); `path_bytes` holds the exact bytes of a path that
    is not valid UTF-8, base64, as in results.jsonl."""
    cells = {
        "path": verdict.path,
        "path_bytes": exact_bytes(verdict.path),
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
        **{f"provenance_{key}": getattr(verdict.provenance, key) if verdict.provenance else None
           for key in ("grade", "says", "source", "generator", "signer")},
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
    return {column: readable(cell) if isinstance(cell, str) else cell for column, cell in cells.items()}


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
    provenance: dict[str, int] = Field(
        default={}, description="distinct images by provenance grade (proof, claim, hint, none), where it was read"
    )
    seconds: float
    setup_seconds: float = Field(description="loading the models")
    first_use_seconds: float = Field(default=0.0, description="building the default models, on first use")
    routing_seconds: float
    paths_per_second: float
    random_weights: bool


def summarize(
    verdicts: Sequence[Verdict], out_dir: Path, seconds: float, setup_seconds: float, done_before: int, embedded: int,
    first_use_seconds: float = 0.0,
) -> RunSummary:
    routing_seconds = seconds - setup_seconds - first_use_seconds
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
        provenance=dict(Counter(v.provenance.grade for v in ok if v.duplicate_of is None and v.provenance)),
        seconds=seconds,
        setup_seconds=setup_seconds,
        first_use_seconds=first_use_seconds,
        routing_seconds=routing_seconds,
        paths_per_second=(len(verdicts) - done_before) / routing_seconds if routing_seconds > 0 else 0.0,
        random_weights=any(v.random_weights for v in verdicts),
    )


def render_summary(summary: RunSummary, console: Console) -> None:
    if not summary.paths:
        show(console, f"no files under the given paths: nothing to judge, nothing written to {summary.out_dir}")
        return
    table = Table(title=Text(readable(f"coe route: {summary.paths} paths -> {summary.out_dir}")))
    table.add_column("what")
    table.add_column("count", justify="right")
    for label in ("real", "fake", "uncertain"):
        table.add_row(f"verdict {label}", str(summary.labels.get(label, 0)))
    for code, count in sorted(summary.errors.items()):
        table.add_row(Text(f"error {code}", style="red"), str(count))
    for expert, count in sorted(summary.experts.items()):
        table.add_row(f"decided by {expert}", str(count))
    for grade in get_args(EvidenceGrade):
        if grade in summary.provenance:
            table.add_row(f"provenance {grade}", str(summary.provenance[grade]))
    table.add_row("distinct images analysed", str(summary.analysed))
    table.add_row("duplicates (same bytes)", str(summary.duplicates))
    table.add_row("done by an earlier attempt", str(summary.done_before))
    table.add_row("newly embedded (CLIP)", str(summary.embedded))
    if summary.first_use_seconds:
        table.add_row("first use: building the default models", f"{summary.first_use_seconds:.1f} s")
    table.add_row("loading models", f"{summary.setup_seconds:.1f} s")
    table.add_row("routing", f"{summary.routing_seconds:.1f} s ({summary.paths_per_second:.1f} paths/s)")
    console.print(table)
    out_dir = Path(summary.out_dir)
    show(console, f"results: {out_dir / RESULTS_JSONL} and {out_dir / RESULTS_CSV}; report: {out_dir / REPORT_FILE}")
    if summary.random_weights:
        console.print(
            "Routing used CLIP features with RANDOM weights (no pretrained weights were available): "
            "fine for tests and the offline demo, not for real decisions. Set features.weights.", style="bold red",
        )
