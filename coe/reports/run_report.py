"""The run report of `coe route`: report.html beside the results, for people who look rather than
read JSON. The page itself stays small whatever the number of images: the summary is rendered in
it, while the rows live in report_data/ as script files (which a page opened from disk may load,
unlike JSON) — a compact index of every row for filtering and sorting, and the details in chunks
that are loaded only when a page of the gallery or of the error list shows one of their rows."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import get_args
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageFilter

from benchmarks.plots import finish_axes, new_figure, save_png
from coe.core.records import EvidenceGrade, Localization, Provenance, Verdict
from coe.core.thumbnails import THUMBNAIL_SIDE, THUMBNAILS_DIR, thumbnail_file
from coe.reports.html import render_page, script_json, write_text_atomically
from coe.results import REPORT_FILE, RESULTS_CSV, RESULTS_JSONL, RunSummary

DATA_DIR = "report_data"
OVERLAYS_DIR = f"{THUMBNAILS_DIR}/overlays"
CHUNK_ROWS = 200
LABELS = ("real", "fake", "uncertain")
GRADES: tuple[str, ...] = get_args(EvidenceGrade)
# Distinct on photographs and for common colour blindness (Okabe & Ito), as RGB.
MASK_COLOURS = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
                (204, 121, 167), (255, 255, 255))
OVERLAY_FILL_ALPHA = 110
HISTOGRAM_FILE = "p_fake.png"
LABEL_COLOURS = {"real": "#1d7f4e", "uncertain": "#b7791f", "fake": "#c0392b"}  # as in report.css


def write_run_report(
    out_dir: Path, verdicts: Sequence[Verdict], summary: RunSummary, subjects: Mapping[str, str] | None = None
) -> Path:
    """report.html and its data beside the results of a run; returns the page's path. `subjects`
    (path -> subject, from a manifest's `subject` column) wins over the subject a subject-level
    router classified: a user's label is not a guess."""
    rows = [_row(out_dir, verdict, (subjects or {}).get(verdict.path)) for verdict in verdicts]
    data = out_dir / DATA_DIR
    fresh = out_dir / (DATA_DIR + ".partial")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir()
    (fresh / "index.js").write_text(f"coeReport.start({script_json(_index(rows))});\n", encoding="utf-8")
    for number, start in enumerate(range(0, len(rows), CHUNK_ROWS)):
        chunk = script_json(rows[start : start + CHUNK_ROWS])
        (fresh / _chunk_name(number)).write_text(f"coeReport.addRows({number},{chunk});\n", encoding="utf-8")
    histogram = _p_fake_histogram(verdicts, fresh / HISTOGRAM_FILE)
    shutil.rmtree(data, ignore_errors=True)
    fresh.rename(data)
    page = render_page(
        "run_report.html.j2",
        scripts=["run_report.js"],
        summary=summary,
        overview=_overview(verdicts, summary),
        data_dir=DATA_DIR,
        histogram=f"{DATA_DIR}/{HISTOGRAM_FILE}" if histogram else None,
        results=[RESULTS_JSONL, RESULTS_CSV],
    )
    return write_text_atomically(out_dir / REPORT_FILE, page)


def _p_fake_histogram(verdicts: Sequence[Verdict], path: Path) -> bool:
    """A PNG of how the distinct images' p_fake spread, stacked by verdict; False with no verdicts."""
    judged = [v for v in verdicts if v.p_fake is not None and v.duplicate_of is None]
    if not judged:
        return False
    figure, (axes,) = new_figure()
    figure.set_size_inches(7, 2.6)
    labels = [label for label in LABEL_COLOURS if any(v.label == label for v in judged)]
    axes.hist(
        [[v.p_fake for v in judged if v.label == label] for label in labels], bins=np.linspace(0, 1, 41),
        stacked=True, color=[LABEL_COLOURS[label] for label in labels], label=labels,
    )
    axes.set_xlim(0, 1)
    finish_axes(axes, f"p_fake of {len(judged)} distinct images", "p_fake", "images", "upper center")
    save_png(figure, path)
    return True


def _chunk_name(number: int) -> str:
    return f"rows-{number:05d}.js"


def _overview(verdicts: Sequence[Verdict], summary: RunSummary) -> dict:
    decided = sum(summary.experts.values())
    return {
        "labels": [(label, summary.labels.get(label, 0)) for label in LABELS],
        "errors": sorted(summary.errors.items(), key=lambda item: (-item[1], item[0])),
        "n_errors": sum(summary.errors.values()),
        "experts": [
            (name, count, count / decided if decided else 0.0)
            for name, count in sorted(summary.experts.items(), key=lambda item: (-item[1], item[0]))
        ],
        "routers": sorted({v.routing.router_id for v in verdicts if v.routing}),
        "features": sorted({v.features for v in verdicts if v.features}),
        "routing_seconds": summary.routing_seconds,
        "with_masks": sum(bool(_evidence_with_masks(v)) for v in verdicts if v.duplicate_of is None),
        "provenance": [(grade, summary.provenance[grade]) for grade in GRADES if grade in summary.provenance],
        "stage_ms": _mean_stage_ms(verdicts),
    }


STAGES = {"decode": "decoding", "provenance": "reading provenance (within decoding)", "features": "CLIP features",
          "routing": "routing", "expert": "experts"}


def _mean_stage_ms(verdicts: Sequence[Verdict]) -> list[tuple[str, float, int]]:
    """(stage, mean milliseconds per image, images measured) for the stages the run timed."""
    analysed = [v.timings_ms for v in verdicts if v.error is None and v.duplicate_of is None]
    return [
        (label, sum(times) / len(times), len(times))
        for stage, label in STAGES.items()
        if (times := [timings[stage] for timings in analysed if stage in timings])
    ]


def _index(rows: list[dict]) -> dict:
    """Per row, what the filters and the sort read, as small numbers (names are listed once), and
    the error list."""
    experts = sorted({row["decided_by"] for row in rows if row["decided_by"]})
    subjects = sorted({row["subject"] for row in rows if row["subject"]})
    errors = sorted({row["error"]["code"] for row in rows if row["error"]})

    def position(names: list[str], name: str | None) -> int:
        return names.index(name) if name else -1

    return {
        "n": len(rows),
        "chunk_rows": CHUNK_ROWS,
        "labels": list(LABELS),
        "experts": experts,
        "subjects": subjects,
        "errors": errors,
        "grades": list(GRADES),
        "label": [LABELS.index(row["label"]) if row["label"] in LABELS else -1 for row in rows],
        "p_fake": [None if row["p_fake"] is None else round(row["p_fake"], 4) for row in rows],
        "expert": [position(experts, row["decided_by"]) for row in rows],
        "subject": [position(subjects, row["subject"]) for row in rows],
        "error": [position(errors, row["error"]["code"] if row["error"] else None) for row in rows],
        # -1: provenance was not read (off, or the file could not be decoded)
        "grade": [position(list(GRADES), row["provenance"]["grade"] if row["provenance"] else None) for row in rows],
        # The error list shows these without loading the chunks they are in.
        "error_rows": [
            [number, row["path"], row["error"]["code"], row["error"]["message"]]
            for number, row in enumerate(rows) if row["error"]
        ],
    }


def _row(out_dir: Path, verdict: Verdict, subject: str | None) -> dict:
    """What a card and the error list show of one verdict; URLs are relative to the report."""
    routing = verdict.routing
    return {
        "path": verdict.path,
        "file": Path(verdict.path).absolute().as_uri(),
        "label": verdict.label,
        "p_fake": verdict.p_fake,
        "decided_by": verdict.decided_by,
        "subject": subject or (routing.subject if routing else None),
        "reason": verdict.reason,
        "explanation": verdict.explanation,
        "duplicate_of": verdict.duplicate_of,
        "image": f"{verdict.image.width}×{verdict.image.height} {verdict.image.format}" if verdict.image else None,
        "thumbnail": _existing(out_dir, thumbnail_file(verdict.image_id)) if verdict.image_id else None,
        "masks": _masks(out_dir, verdict),
        "opinions": [
            {"expert": output.expert, "label": output.label, "p_fake": output.p_fake, "explanation": output.explanation}
            for output in verdict.expert_outputs
        ],
        "ranked": [
            {"expert": r.expert, "p_correct": r.p_correct, "cost": r.cost, "utility": r.utility}
            for r in (routing.ranked if routing else [])
        ],
        "provenance": _provenance(verdict.provenance) if verdict.provenance else None,
        "error": {"code": verdict.error.code.value, "message": verdict.error.message} if verdict.error else None,
    }


def _provenance(provenance: Provenance) -> dict:
    return {
        **provenance.model_dump(include={"grade", "says", "source", "generator", "signer", "error"}),
        "findings": [
            finding.model_dump(include={"grade", "says", "source", "generator", "model", "signer", "validation", "detail"})
            for finding in provenance.findings
        ],
    }


def _existing(out_dir: Path, relative: str) -> str | None:
    return _url(relative) if (out_dir / relative).is_file() else None


def _url(relative: str) -> str:
    return "/".join(quote(part) for part in relative.split("/"))


def _evidence_with_masks(verdict: Verdict) -> list[Localization]:
    evidence = [*verdict.expert_outputs, *([verdict.localization] if verdict.localization else [])]
    return [item for item in evidence if item.union_mask_file or any(a.mask_file for a in item.artifacts)]


def _masks(out_dir: Path, verdict: Verdict) -> list[dict]:
    """Each artifact's mask as a coloured overlay at thumbnail size; an expert that marked pixels
    without naming artifacts shows its union mask instead."""
    masks = []
    for evidence in _evidence_with_masks(verdict):
        named = [artifact for artifact in evidence.artifacts if artifact.mask_file]
        layers = [(a.mask_file, a.category, a.phrase, a.explanation) for a in named] or [
            (evidence.union_mask_file, "other", f"what {evidence.expert} marked", evidence.explanation)
        ]
        for mask_file, category, phrase, explanation in layers:
            colour = MASK_COLOURS[len(masks) % len(MASK_COLOURS)]
            masks.append({
                "expert": evidence.expert,
                "category": category,
                "phrase": phrase,
                "explanation": explanation,
                "colour": "#{:02x}{:02x}{:02x}".format(*colour),
                "overlay": _overlay(out_dir, mask_file, colour, len(masks)),
            })
    return masks


def _overlay(out_dir: Path, mask_file: str, colour: tuple[int, int, int], index: int) -> str | None:
    """A transparent PNG at thumbnail size: the mask filled in `colour` and outlined; made once.
    None when the mask file cannot be read (the artifact is still listed)."""
    stem = mask_file.removeprefix("masks/").removesuffix(".png")
    relative = f"{OVERLAYS_DIR}/{stem}.{index}.png"
    path = out_dir / relative
    if not path.exists():
        try:
            with Image.open(out_dir / mask_file) as source:
                mask = source.convert("L")
                mask.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BOX)
        except OSError:
            return None
        inside = np.asarray(mask) >= 128
        edge = inside & ~(np.asarray(mask.filter(ImageFilter.MinFilter(3))) >= 128)
        rgba = np.zeros((*inside.shape, 4), dtype=np.uint8)
        rgba[inside | edge, :3] = colour
        rgba[inside, 3] = OVERLAY_FILL_ALPHA
        rgba[edge, 3] = 255
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        Image.fromarray(rgba, mode="RGBA").save(partial, format="PNG", optimize=True)
        partial.replace(path)
    return _url(relative)
