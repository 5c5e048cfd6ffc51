"""`coe wild`: how a configuration does on labelled images from real generators and real cameras.

Two protocols, each judged by the routed system and by every configured expert alone:
- `as-is`: the files as they are, metadata included (which provenance, when on, weighs);
- `matched`: every image, real or fake, centre-cropped to the same side, re-encoded as JPEG at the
  same quality and with no metadata, so that size, codec and metadata cannot tell the classes apart.
  Cropped, never rescaled: resampling leaves its own trace in the spectrum (scaling wild-dev's 128 px
  GAN faces up to 256 px let the spectrum expert find them at AUC 0.99, against 0.54 as they are), so
  an image smaller than the side is left out of the matched protocol and counted.

For each: AUC, accuracy at 0.5, ECE, the share answered `uncertain` and the accuracy of the rest
(coverage against accuracy), and for every generator (fakes) and every real source (reals) the share
called fake. A detector that tells a wild set apart as-is but not matched learnt the confound.

Matching cannot equalise how sharp the pixels are (benchmarks/confounds.py): each protocol also
reports how well "blurrier is fake" alone does, and every system's AUC over the fake-real pairs of
equal sharpness, what is left of it when blur cannot decide."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table
from rich.text import Text

from benchmarks.confounds import SHARPNESS_CALIPER, blur_says_fake, log_sharpness, matched_pair_auc, sharpness
from benchmarks.metrics import COVERAGES, accuracy_at_coverage, detector_metrics
from benchmarks.readers import BenchmarkItem, BenchmarkSpec, load_benchmark_spec, read_benchmark
from coe.config import CoeConfig
from coe.core.console import plain_console, progress_bar, show
from coe.core.imaging import DecodedImage, decode_image_bytes, decode_or_error, read_image
from coe.core.names import readable
from coe.core.records import ErrorCode, ErrorInfo, Verdict
from coe.pipeline import RoutePipeline, judge_decoded

Protocol = Literal["as-is", "matched"]
PROTOCOLS: tuple[Protocol, ...] = ("as-is", "matched")
ROUTED = "routed"


class Matching(BaseModel):
    side: int = Field(default=256, ge=32, description="matched: the centre crop's side in pixels")
    jpeg_quality: int = Field(default=90, ge=1, le=100, description="matched: the JPEG quality of the re-encoding")


class GroupRow(BaseModel):
    protocol: Protocol
    system: str
    label: Literal["real", "fake"]
    group: str = Field(description="the generator of fakes, the source of reals")
    n: int
    called_fake: float
    uncertain: float
    mean_p_fake: float


class SystemRow(BaseModel):
    protocol: Protocol
    system: str
    n: int
    errors: int
    auc: float
    accuracy: float = Field(description="p_fake >= 0.5 called fake, every image counted")
    ece: float
    uncertain: float = Field(description="share of images answered uncertain")
    decided_accuracy: float = Field(description="accuracy over the images not answered uncertain")
    tpr: float
    tnr: float
    too_small: int = Field(default=0, description="matched: images smaller than the side, left out")
    accuracy_at_coverage: dict[str, float] = Field(
        default={}, description="accuracy of the share of images the system is surest of (|p_fake - 0.5| largest)"
    )
    auc_at_equal_sharpness: float = Field(
        description="AUC over the fake-real pairs of equal sharpness (log ratio within the caliper)"
    )
    equal_sharpness_pairs: int


class ConfoundRow(BaseModel):
    """How well a confound alone tells the classes apart under one protocol."""

    protocol: Protocol
    confound: Literal["sharpness"] = "sharpness"
    rule: str = "blurrier is fake"
    auc: float = Field(description="AUC of the rule over every image")
    auc_at_equal_sharpness: float = Field(description="the rule's AUC over the pairs of equal sharpness: near 0.5 "
                                          "when the caliper holds the confound equal")
    equal_sharpness_pairs: int
    caliper: float = Field(description="largest |log sharpness difference| of a pair counted as equally sharp")


class WildReport(BaseModel):
    source: str
    matching: Matching
    systems: list[SystemRow]
    confounds: list[ConfoundRow]
    groups: list[GroupRow]
    random_weights: bool


def wild_items(source: Path) -> list[BenchmarkItem]:
    """A folder with real/ and fake/ (at any depth, as `coe bench` reads them), a CSV or JSONL manifest
    (path, label, generator, ...; paths relative to it), or a benchmark definition (YAML)."""
    if source.suffix.lower() in {".yaml", ".yml"}:
        spec = load_benchmark_spec(source)
    elif source.is_file():
        spec = BenchmarkSpec(name="wild", reader="manifest", root=source.parent, annotations=source.name)
    else:
        spec = BenchmarkSpec(name="wild", reader="folder", root=source)
    return read_benchmark(spec)


def matched(image: DecodedImage, matching: Matching, limits) -> DecodedImage | ErrorInfo:
    """The image as the matched protocol shows it to every system, or why it cannot be shown so."""
    encoded = matched_file(image, matching)
    return encoded if isinstance(encoded, ErrorInfo) else decode_image_bytes(encoded, image.record.path, limits)


def matched_file(image: DecodedImage, matching: Matching) -> bytes | ErrorInfo:
    """The matched protocol's JPEG of the image: its centre, nothing but pixels."""
    picture = Image.fromarray(image.pixels)
    width, height = picture.size
    if min(width, height) < matching.side:
        return ErrorInfo(
            code=ErrorCode.IMAGE_TOO_SMALL,
            message=f"{image.record.path}: {width}x{height} is smaller than the matched side {matching.side} "
            "(cropped, never rescaled); a smaller --side matches it",
        )
    left, top = (width - matching.side) // 2, (height - matching.side) // 2
    picture = picture.crop((left, top, left + matching.side, top + matching.side))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=matching.jpeg_quality)  # no exif, no icc: nothing but pixels
    return buffer.getvalue()


def _decode(item: BenchmarkItem, protocol: Protocol, matching: Matching, pipeline: RoutePipeline) -> DecodedImage | ErrorInfo:
    """As-is, the file with what it says about its origin (when provenance is on); matched, its
    pixels alone (the re-encoding drops the metadata, so provenance is not read)."""
    limits = pipeline.config.ingest

    def decode() -> DecodedImage | ErrorInfo:
        if protocol == "matched":
            return matched(read_image(item.path, limits), matching, limits)
        return pipeline.read(os.fspath(item.path))

    return decode_or_error(item.path, decode)


def run_wild_check(
    config: CoeConfig,
    source: Path,
    out_dir: Path,
    protocols: Sequence[Protocol] = PROTOCOLS,
    matching: Matching = Matching(),
    experts: Sequence[str] | None = None,
    console: Console | None = None,
    show_progress: bool = True,
) -> WildReport:
    """Judge `source` under each protocol with the routed system and each expert in `experts` (all
    configured ones by default); write wild.json, systems.csv and groups.csv into out_dir."""
    console = console or plain_console(stderr=True)
    items = wild_items(source)
    warn = lambda message: show(console, message, "yellow")  # noqa: E731
    systems = {ROUTED: RoutePipeline(config, say=warn)}
    for name in experts if experts is not None else config.experts:
        systems[name] = RoutePipeline(config, expert=name, say=warn)
    rows: list[SystemRow] = []
    confounds: list[ConfoundRow] = []
    groups: list[GroupRow] = []
    try:
        with ThreadPoolExecutor(config.run.decode_workers) as decoders, progress_bar(console, show=show_progress) as bar:
            for protocol in protocols:
                task = bar.add_task(f"wild check, {protocol}", total=len(items))
                verdicts: dict[str, list[Verdict]] = {name: [] for name in systems}
                sharpness_values: list[float] = []
                too_small = 0
                for start in range(0, len(items), config.run.chunk_size):
                    chunk = items[start : start + config.run.chunk_size]
                    decoded = list(decoders.map(lambda item: _decode(item, protocol, matching, systems[ROUTED]), chunk))
                    too_small += sum(isinstance(d, ErrorInfo) and d.code == ErrorCode.IMAGE_TOO_SMALL for d in decoded)
                    sharpness_values += decoders.map(_sharpness, decoded)
                    named = [(str(item.path), image) for item, image in zip(chunk, decoded, strict=True)]
                    for name, pipeline in systems.items():
                        verdicts[name] += judge_decoded(named, pipeline, {})
                    bar.advance(task, len(chunk))
                confounds.append(_confound(protocol, items, sharpness_values))
                for name, judged in verdicts.items():
                    row, group_rows = _score(protocol, name, items, judged, sharpness_values)
                    rows.append(row.model_copy(update={"too_small": too_small if protocol == "matched" else 0}))
                    groups += group_rows
    finally:
        for pipeline in systems.values():
            pipeline.close()
    routing = systems[ROUTED].routing
    report = WildReport(
        source=readable(str(source)), matching=matching, systems=rows, confounds=confounds, groups=groups,
        random_weights=bool(routing.extractor and routing.extractor.random_weights),
    )
    _write(report, out_dir)
    return report


def _sharpness(image: DecodedImage | ErrorInfo) -> float:
    return sharpness(image.pixels) if isinstance(image, DecodedImage) else float("nan")


def _confound(protocol: Protocol, items: Sequence[BenchmarkItem], sharpness_values: Sequence[float]) -> ConfoundRow:
    values = np.array(sharpness_values, dtype=float)
    known = ~np.isnan(values)
    is_fake = np.array([item.label == "fake" for item in items], dtype=bool)
    score, matched_on = blur_says_fake(values[known]), log_sharpness(values[known])
    auc, _ = matched_pair_auc(score, is_fake[known], matched_on, caliper=np.inf)  # every pair: the ROC AUC
    matched_auc, pairs = matched_pair_auc(score, is_fake[known], matched_on, SHARPNESS_CALIPER)
    return ConfoundRow(protocol=protocol, auc=auc, auc_at_equal_sharpness=matched_auc,
                       equal_sharpness_pairs=pairs, caliper=SHARPNESS_CALIPER)


def _score(
    protocol: Protocol,
    system: str,
    items: Sequence[BenchmarkItem],
    verdicts: Sequence[Verdict],
    sharpness_values: Sequence[float],
):
    kept = [i for i, verdict in enumerate(verdicts) if verdict.error is None]
    judged = [(items[i], verdicts[i]) for i in kept]
    p_fake = np.array([verdict.p_fake for _, verdict in judged], dtype=float)
    is_fake = np.array([item.label == "fake" for item, _ in judged], dtype=bool)
    matched_on = log_sharpness(np.array([sharpness_values[i] for i in kept], dtype=float))
    auc_at_equal_sharpness, pairs = matched_pair_auc(p_fake, is_fake, matched_on, SHARPNESS_CALIPER)
    labels = np.array([verdict.label for _, verdict in judged])
    metrics = detector_metrics(p_fake, is_fake)
    decided = labels != "uncertain"
    right = (labels == "fake") == is_fake
    row = SystemRow(
        protocol=protocol, system=system, n=len(judged), errors=len(items) - len(judged), auc=metrics["auc"],
        accuracy=metrics["accuracy"], ece=metrics["ece"], tpr=metrics["tpr"], tnr=metrics["tnr"],
        uncertain=float((~decided).mean()) if len(judged) else float("nan"),
        decided_accuracy=float(right[decided].mean()) if decided.any() else float("nan"),
        accuracy_at_coverage=accuracy_at_coverage(p_fake, is_fake),
        auc_at_equal_sharpness=auc_at_equal_sharpness, equal_sharpness_pairs=pairs,
    )
    group_rows = []
    keys = sorted({(item.label, item.generator) for item, _ in judged})
    for label, group in keys:
        members = np.array([item.label == label and item.generator == group for item, _ in judged])
        group_rows.append(GroupRow(
            protocol=protocol, system=system, label=label, group=readable(group), n=int(members.sum()),
            called_fake=float((labels[members] == "fake").mean()),
            uncertain=float((labels[members] == "uncertain").mean()),
            mean_p_fake=float(p_fake[members].mean()),
        ))
    return row, group_rows


def _write(report: WildReport, out_dir: Path) -> None:
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "wild.json").write_text(report.model_dump_json(indent=2))
    pd.DataFrame([row.model_dump() for row in report.systems]).to_csv(out_dir / "systems.csv", index=False)
    pd.DataFrame([row.model_dump() for row in report.groups]).to_csv(out_dir / "groups.csv", index=False)


def render_wild(report: WildReport, console: Console) -> None:
    systems = Table(title=Text(readable(f"wild check of {report.source}")))
    columns = ("protocol", "system", "n", "AUC", "AUC, equal sharpness", "accuracy", "ECE", "uncertain",
               "decided acc.", "TPR", "TNR")
    for column in columns:
        systems.add_column(column, justify="left" if column in columns[:2] else "right")
    for row in report.systems:
        systems.add_row(
            row.protocol, row.system, str(row.n), *(f"{value:.3f}" for value in (
                row.auc, row.auc_at_equal_sharpness, row.accuracy, row.ece, row.uncertain, row.decided_accuracy,
                row.tpr, row.tnr)),
            style="bold" if row.system == ROUTED else "",
        )
    console.print(systems)
    confounds = Table(title="a confound alone: how well \"blurrier is fake\" separates the classes")
    for column in ("protocol", "AUC", "AUC, equal sharpness", "pairs of equal sharpness"):
        confounds.add_column(column, justify="left" if column == "protocol" else "right")
    for confound in report.confounds:
        confounds.add_row(confound.protocol, f"{confound.auc:.3f}", f"{confound.auc_at_equal_sharpness:.3f}",
                          str(confound.equal_sharpness_pairs))
    console.print(confounds)
    if report.confounds:
        console.print(f"equal sharpness: the pairs of a fake and a real whose log sharpness differs by at most "
                      f"{report.confounds[0].caliper:.2f}; where a system's AUC falls to 0.5 there, it was telling blur.")
    coverage = Table(title="accuracy where each system is surest (coverage: the share of images it answers)")
    coverage.add_column("protocol")
    coverage.add_column("system")
    for share in COVERAGES:
        coverage.add_column(f"{share:.0%}", justify="right")
    for row in report.systems:
        coverage.add_row(row.protocol, row.system, *(f"{row.accuracy_at_coverage[f'{s:.0%}']:.3f}" for s in COVERAGES))
    console.print(coverage)
    for protocol in dict.fromkeys(row.protocol for row in report.groups):
        names = list(dict.fromkeys(row.system for row in report.groups if row.protocol == protocol))
        table = Table(title=f"share called fake, {protocol}")
        table.add_column("label")
        table.add_column("generator / source")
        table.add_column("n", justify="right")
        for name in names:
            table.add_column(name, justify="right")
        cells: dict[tuple[str, str], dict[str, GroupRow]] = {}
        for row in report.groups:
            if row.protocol == protocol:
                cells.setdefault((row.label, row.group), {})[row.system] = row
        for (label, group), by_system in sorted(cells.items()):
            first = next(iter(by_system.values()))
            table.add_row(label, Text(group), str(first.n), *(f"{by_system[name].called_fake:.2f}" for name in names))
        console.print(table)
    matched_rows = [row for row in report.systems if row.protocol == "matched"]
    if matched_rows and matched_rows[0].too_small:
        show(console, f"matched: {matched_rows[0].too_small} image(s) smaller than {report.matching.side} px left out "
             "(cropped, never rescaled: a smaller --side keeps them)", "yellow")
    if report.random_weights:
        console.print("The routed system read CLIP features with RANDOM weights.", style="bold red")
