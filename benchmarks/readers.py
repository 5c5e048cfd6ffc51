"""Benchmark readers: every benchmark format coe evaluates on, read into one list of `BenchmarkItem`.

A benchmark is a YAML file (`configs/benchmarks/<name>.yaml`, a `BenchmarkSpec`) that names its
reader and where its files are. The readers, registered in `READERS`:

- ``folder``: images under class folders at any depth below ``root``: ``real``, ``0_real`` or
  ``nature`` for real, ``fake``, ``1_fake`` or ``ai`` for fake (case-insensitive). Folders between
  ``root`` and the class folder named ``train``, ``val``, ``valid``, ``validation`` or ``test`` give
  the split; the others, joined by "/", give the generator (or the subject, with
  ``folder_names: subject``). This covers ``real/ fake/``, CNNDetection and UnivFD
  (``test/<generator>/<category>/{0_real,1_fake}``), GenImage (``<generator>/{train,val}/{ai,nature}``)
  and FakeClue's image folders (``{train,test}/<category>/{fake,real}``).
- ``manifest``: a CSV file with a header row, or a JSONL file (one object per line, blank lines
  allowed), chosen by extension. Required: ``path`` (relative to ``root/images``, or absolute) and
  ``label``, which is ``real`` or ``fake``, or 0 / 1 where **1 = fake** (as in CNNDetection's
  ``0_real/1_fake``). Optional: ``subject``, ``generator``, ``mask_path`` (or ``mask``; relative to
  ``root``, nonzero pixels = manipulated), ``split``, ``explanation``. Other columns are ignored.
- ``synthscars``: LEGION's SynthScars annotations (``{train,test}/annotations/{train,test}.json``, a
  list of ``{"<id>": {"img_file_name", "caption", "refs": [{"sentence", "explanation",
  "segmentation": [[x1, y1, x2, y2, ...], ...], "bbox"}]}}``, images in ``{train,test}/images``).
  Every image is fake; the ground-truth mask is the union of all refs' polygons (pixel coordinates).
- ``fakeclue``: FakeVLM's FakeClue annotations (``data_json/{train,test}.json``, a list of
  ``{"image", "conversations": [{"from": "human", ...}, {"from": "gpt", "value"}], "label", "cate"}``,
  images in ``{train,test}/``). FakeClue's label is **1 = real, 0 = fake**, the opposite of manifests.
- ``builtin``: coe's built-in benchmark, the manifest reader over ``root/manifest.csv``.

Readers check the whole benchmark before returning and raise one `BenchmarkFormatError` that names
the file and the entry of every problem, so a broken download is repaired in one pass, not one
error at a time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from coe.core.errors import UserError
from coe.core.manifests import ManifestFormatError, read_manifest_rows
from coe.core.yaml_files import YamlFileError, load_yaml_model

Label = Literal["real", "fake"]
ReaderName = Literal["folder", "manifest", "synthscars", "fakeclue", "builtin"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
CLASS_FOLDERS: dict[str, Label] = {
    "real": "real", "0_real": "real", "nature": "real",
    "fake": "fake", "1_fake": "fake", "ai": "fake",
}  # fmt: skip
SPLIT_NAMES = frozenset({"train", "val", "valid", "validation", "test"})
BUILTIN_MANIFEST = "manifest.csv"
MAX_LISTED_PROBLEMS = 20

# 1 = fake follows CNNDetection's 0_real / 1_fake, the convention of most detection code.
MANIFEST_LABELS: dict[str, Label] = {"real": "real", "fake": "fake", "0": "real", "1": "fake"}
MANIFEST_LABEL_HELP = "expected real or fake, or 0 or 1 where 1 = fake"
FAKECLUE_LABELS: dict[int, Label] = {1: "real", 0: "fake"}
# FakeClue's folders and `cate` say "doc"; coe's subjects (and the built-in benchmark) say
# "document", and subject-level routing needs one name per subject across benchmarks.
FAKECLUE_SUBJECTS = {"doc": "document"}


class BenchmarkFormatError(UserError, ValueError):
    """A benchmark (or its definition) that cannot be read. Every problem names its file and entry;
    the message lists the first `MAX_LISTED_PROBLEMS` and counts the rest."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        listed = "\n".join(f"  - {problem}" for problem in problems[:MAX_LISTED_PROBLEMS])
        rest = len(problems) - MAX_LISTED_PROBLEMS
        more = f"\n  ... and {rest} more" if rest > 0 else ""
        count = "1 problem" if len(problems) == 1 else f"{len(problems)} problems"
        super().__init__(f"{source}: {count}\n{listed}{more}")


class BenchmarkItem(BaseModel):
    """One image of a benchmark, with its ground truth."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    path: Path = Field(description="absolute path of the image file")
    label: Label
    subject: str = "unknown"
    generator: str = "unknown"
    split: str = "all"
    mask_path: Path | None = Field(default=None, description="ground-truth mask file; nonzero = manipulated")
    mask_polygons: list[list[float]] = Field(
        default=[], description="ground-truth polygons [x1, y1, x2, y2, ...] in pixel coordinates"
    )
    explanation: str | None = None
    entry: str = Field(description="where the item is defined, for messages: 'manifest.csv line 7'")

    @field_validator("path")
    @classmethod
    def _path_is_absolute(cls, path: Path) -> Path:
        if not path.is_absolute():
            raise ValueError(f"item paths are absolute, got {path}")
        return path

    def ground_truth_mask(self, size: tuple[int, int]) -> np.ndarray | None:
        """The (height, width) = `size` boolean mask of manipulated pixels, or None without ground truth.

        A mask file of another size is resized with nearest neighbour; polygons are filled."""
        height, width = size
        if self.mask_path is not None:
            return _read_mask_file(self.mask_path, (height, width), self.entry)
        if self.mask_polygons:
            canvas = Image.new("L", (width, height), 0)
            draw = ImageDraw.Draw(canvas)
            for polygon in self.mask_polygons:
                draw.polygon(list(zip(polygon[0::2], polygon[1::2])), fill=1, outline=1)
            return np.asarray(canvas, dtype=bool)
        return None


def _read_mask_file(path: Path, size: tuple[int, int], entry: str) -> np.ndarray:
    height, width = size
    try:
        with Image.open(path) as image:
            image.load()
            # Palette and colour masks count a pixel as manipulated when any colour channel is
            # nonzero; converting to grey would round a dark pure blue down to 0.
            single_band = image.mode in ("1", "L", "I", "I;16", "F")
            pixels = image if single_band else image.convert("RGB")
            if pixels.size != (width, height):
                pixels = pixels.resize((width, height), Image.Resampling.NEAREST)
            array = np.asarray(pixels)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise BenchmarkFormatError(entry, [f"{entry}: cannot read mask file {path}: {error}"]) from error
    return array != 0 if array.ndim == 2 else (array != 0).any(axis=2)


class BenchmarkSpec(BaseModel):
    """A benchmark definition: `configs/benchmarks/<name>.yaml`."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.\-]*$")
    reader: ReaderName
    root: Path | None = Field(
        default=None, description="the benchmark's folder; relative to the YAML file's folder when relative"
    )
    annotations: str | None = Field(
        default=None, description="manifest or JSON file, relative to root (builtin: manifest.csv)"
    )
    images: str = Field(default=".", description="folder the image paths are relative to, relative to root")
    splits: list[str] | None = Field(default=None, min_length=1, description="keep only these splits")
    subject: str = Field(default="unknown", description="subject of items whose format gives none")
    generator: str = Field(default="unknown", description="generator of items whose format gives none")
    folder_names: Literal["generator", "subject"] = Field(
        default="generator", description="folder reader: what the folders above the class folder name"
    )
    description: str = ""

    @model_validator(mode="after")
    def _reader_has_its_files(self) -> BenchmarkSpec:
        if self.reader == "builtin" and self.annotations is None:
            self.annotations = BUILTIN_MANIFEST
        if self.reader in ("manifest", "synthscars", "fakeclue") and self.annotations is None:
            raise ValueError(f"reader {self.reader!r} needs `annotations`: its file, relative to root")
        if self.reader == "folder" and self.annotations is not None:
            raise ValueError("reader 'folder' reads labels from folder names and takes no `annotations`")
        if self.reader != "builtin" and self.root is None:
            raise ValueError(f"reader {self.reader!r} needs `root`: the benchmark's folder")
        return self


def load_benchmark_spec(path: Path) -> BenchmarkSpec:
    """Read and validate a benchmark YAML file; a relative `root` is taken from the file's folder."""
    path = Path(path)
    try:
        spec = load_yaml_model(path, BenchmarkSpec)
    except YamlFileError as error:
        raise BenchmarkFormatError(str(path), error.problems) from None
    if spec.root is not None:
        root = spec.root.expanduser()
        spec.root = Path(os.path.abspath(root if root.is_absolute() else path.parent / root))
    return spec


def read_benchmark(spec: BenchmarkSpec) -> list[BenchmarkItem]:
    """Every item of the benchmark in the selected splits, sorted by path."""
    items = READERS[spec.reader](spec)
    kept = [item for item in items if spec.splits is None or item.split in spec.splits]
    if not kept:
        where = f"{spec.root / spec.annotations}" if spec.annotations and spec.root else f"{spec.root}"
        found = sorted({item.split for item in items})
        detail = f" in splits {spec.splits} (its splits: {found})" if items else ""
        raise BenchmarkFormatError(f"benchmark {spec.name!r}", [f"{where}: no items{detail}"])
    return sorted(kept, key=lambda item: str(item.path))


class _Problems:
    """The problems found in one benchmark, raised together once it has been read through."""

    def __init__(self, spec: BenchmarkSpec) -> None:
        self.source = _source(spec)
        self.found: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.found.append(f"{where}: {what}")

    def raise_if_any(self) -> None:
        if self.found:
            raise BenchmarkFormatError(self.source, self.found)


def _source(spec: BenchmarkSpec) -> str:
    return f"benchmark {spec.name!r}"


def _absolute(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return Path(os.path.abspath(path if path.is_absolute() else base / path))


def _shown(path: Path, root: Path) -> str:
    """A file as messages name it: relative to the benchmark's root when inside it."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _text(value: Any) -> str | None:
    """A field's value as text, or None when absent or blank."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _require_file(problems: _Problems, where: str, path: Path, what: str) -> bool:
    if path.is_file():
        return True
    problems.add(where, f"{what} file not found: {path}")
    return False


def _existing_root(spec: BenchmarkSpec) -> Path:
    if spec.root is None:
        problem = f"reader {spec.reader!r} needs `root`; coe fills it in for its built-in benchmark"
        raise BenchmarkFormatError(_source(spec), [f"{_source(spec)}: {problem}"])
    root = Path(os.path.abspath(spec.root))
    if not root.is_dir():
        raise BenchmarkFormatError(_source(spec), [f"{root}: benchmark folder not found"])
    return root


def _existing_file(spec: BenchmarkSpec, root: Path, what: str) -> tuple[Path, str]:
    """The annotation file: its absolute path and its name in messages."""
    path = _absolute(root, spec.annotations)
    shown = _shown(path, root)
    if not path.is_file():
        raise BenchmarkFormatError(_source(spec), [f"{shown}: {what} file not found: {path}"])
    return path, shown


def _split_of(annotations: str) -> str:
    """SynthScars and FakeClue ship one annotation file per split, named after it (test.json)."""
    stem = Path(annotations).stem.lower()
    return stem if stem in SPLIT_NAMES else "all"


def _read_folder(spec: BenchmarkSpec) -> list[BenchmarkItem]:
    root = _existing_root(spec)
    items: list[BenchmarkItem] = []
    saw_class_folder = False
    seen_folders: set[str] = set()
    # Datasets are often symlinked into place, so links are followed; the set guards against cycles.
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real_folder = os.path.realpath(folder)
        if real_folder in seen_folders:
            subfolders[:] = []
            continue
        seen_folders.add(real_folder)
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        parts = Path(folder).relative_to(root).parts
        class_depths = [i for i, part in enumerate(parts) if part.lower() in CLASS_FOLDERS]
        if not class_depths:
            continue
        saw_class_folder = True
        class_depth = class_depths[-1]  # the nearest class folder decides
        above = parts[:class_depth]
        splits = [part for part in above if part.lower() in SPLIT_NAMES]
        names = "/".join(part for part in above if part.lower() not in SPLIT_NAMES)
        subject = names if names and spec.folder_names == "subject" else spec.subject
        generator = names if names and spec.folder_names == "generator" else spec.generator
        for file in sorted(files):
            if file.startswith(".") or Path(file).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            path = Path(folder) / file
            items.append(
                BenchmarkItem(
                    path=Path(os.path.abspath(path)),
                    label=CLASS_FOLDERS[parts[class_depth].lower()],
                    subject=subject,
                    generator=generator,
                    split=splits[-1] if splits else "all",
                    entry=path.relative_to(root).as_posix(),
                )
            )
    if not saw_class_folder:
        real = ", ".join(sorted(name for name, label in CLASS_FOLDERS.items() if label == "real"))
        fake = ", ".join(sorted(name for name, label in CLASS_FOLDERS.items() if label == "fake"))
        problem = (
            f"{root}: no class folder below it: expected folders named {real} (real images) or {fake} "
            "(fake images), at any depth, as in real/ fake/, 0_real/ 1_fake/ or nature/ ai/"
        )
        raise BenchmarkFormatError(_source(spec), [problem])
    return items


def _manifest_rows(path: Path, shown: str, problems: _Problems) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, fields) for every data row of a CSV or JSONL manifest; format problems go to `problems`."""
    try:
        rows = read_manifest_rows(path, required_columns=("path", "label"))
    except ManifestFormatError as error:
        problems.add(shown if error.line is None else f"{shown} line {error.line}", error.problem)
        return
    for row in rows:
        where = f"{shown} line {row.line}"
        if row.problem is None:
            yield where, row.fields
        else:
            problems.add(where, row.problem)


def _read_manifest(spec: BenchmarkSpec) -> list[BenchmarkItem]:
    problems = _Problems(spec)
    root = _existing_root(spec)
    manifest, shown = _existing_file(spec, root, "manifest")
    images = _absolute(root, spec.images)
    items = []
    for where, row in _manifest_rows(manifest, shown, problems):
        path, raw_label = _text(row.get("path")), row.get("label")
        label_text = None if isinstance(raw_label, bool) else _text(raw_label)
        label = MANIFEST_LABELS.get(label_text.lower()) if label_text else None
        if path is None:
            problems.add(where, "missing required field 'path'")
        if _text(raw_label) is None:
            problems.add(where, f"missing required field 'label' ({MANIFEST_LABEL_HELP})")
        elif label is None:
            problems.add(where, f"unknown label {raw_label!r} ({MANIFEST_LABEL_HELP})")
        mask = _text(row.get("mask_path")) or _text(row.get("mask"))
        mask_path = _absolute(root, mask) if mask else None
        if mask_path is not None:
            _require_file(problems, where, mask_path, "mask")
        image_path = _absolute(images, path) if path else None
        if image_path is None or label is None or not _require_file(problems, where, image_path, "image"):
            continue
        items.append(
            BenchmarkItem(
                path=image_path,
                label=label,
                subject=_text(row.get("subject")) or spec.subject,
                generator=_text(row.get("generator")) or spec.generator,
                split=_text(row.get("split")) or "all",
                mask_path=mask_path,
                explanation=_text(row.get("explanation")),
                entry=where,
            )
        )
    problems.raise_if_any()
    return items


def _json_entries(spec: BenchmarkSpec) -> tuple[Path, str, str, list[Any]]:
    """The images folder, the annotation file's name in messages, the split it names, and the
    file's top-level list."""
    root = _existing_root(spec)
    annotations, shown = _existing_file(spec, root, "annotations")
    try:
        document = json.loads(annotations.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise BenchmarkFormatError(_source(spec), [f"{shown}: not UTF-8 text: {error}"]) from error
    except json.JSONDecodeError as error:
        where = f"{shown} line {error.lineno} column {error.colno}"
        raise BenchmarkFormatError(_source(spec), [f"{where}: bad JSON: {error.msg}"]) from error
    if not isinstance(document, list):
        problem = f"{shown}: expected a JSON list of entries, got {type(document).__name__}"
        raise BenchmarkFormatError(_source(spec), [problem])
    return _absolute(root, spec.images), shown, _split_of(spec.annotations), document


def _polygon_problem(polygon: Any) -> str | None:
    if not isinstance(polygon, list) or not all(
        isinstance(c, (int, float)) and not isinstance(c, bool) for c in polygon
    ):
        return "a polygon must be a list of numbers [x1, y1, x2, y2, ...]"
    if len(polygon) % 2:
        return f"polygon with an odd number of coordinates ({len(polygon)})"
    if len(polygon) < 6:
        return f"polygon with fewer than 3 points ({len(polygon) // 2})"
    return None


def _synthscars_explanation(caption: Any, refs: list[dict[str, Any]]) -> str | None:
    # LEGION learns to write the caption, which upstream builds as a summary, the fixed sentence
    # "To elaborate, I have found the following artifacts." and then '<sentence>:<explanation>' per
    # ref. The public repo has no explanation-scoring script, so the reference kept here is that
    # per-artifact part, one ref per line in the refs' order: scoring against the whole caption
    # would reward copying LEGION's template wording rather than naming the artifacts. Releases
    # whose refs lack explanations carry them only inside the caption, which is then the reference.
    if refs and all(_text(ref.get("explanation")) for ref in refs):
        return "\n".join(
            ": ".join(part for part in (_text(ref.get("sentence")), _text(ref.get("explanation"))) if part)
            for ref in refs
        )
    return _text(caption.strip('"') if isinstance(caption, str) else caption)


def _read_synthscars(spec: BenchmarkSpec) -> list[BenchmarkItem]:
    problems = _Problems(spec)
    images, shown, split, entries = _json_entries(spec)
    items = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry:
            problems.add(f"{shown} entry {index}", 'expected an object {"<id>": {img_file_name, refs, ...}}')
            continue
        for image_id, record in entry.items():
            where = f"{shown} entry {index} (id {image_id})"
            if not isinstance(record, dict):
                problems.add(where, f"expected {{img_file_name, refs, ...}}, not a {type(record).__name__}")
                continue
            file_name, refs = _text(record.get("img_file_name")), record.get("refs")
            if file_name is None:
                problems.add(where, "missing required field 'img_file_name'")
            if not isinstance(refs, list) or not all(isinstance(ref, dict) for ref in refs):
                problems.add(where, "missing required field 'refs' (a list of objects)")
                refs = []
            polygons = []
            for ref_index, ref in enumerate(refs):
                segmentation = ref.get("segmentation")
                if not isinstance(segmentation, list):
                    problems.add(where, f"ref {ref_index}: missing required field 'segmentation' (polygons)")
                    continue
                for polygon_index, polygon in enumerate(segmentation):
                    problem = _polygon_problem(polygon)
                    if problem:
                        problems.add(where, f"ref {ref_index} polygon {polygon_index}: {problem}")
                    else:
                        polygons.append([float(c) for c in polygon])
            image_path = _absolute(images, file_name) if file_name else None
            if image_path is None or not _require_file(problems, where, image_path, "image"):
                continue
            items.append(
                BenchmarkItem(
                    path=image_path,
                    label="fake",
                    subject=spec.subject,
                    generator=spec.generator,
                    split=split,
                    mask_polygons=polygons,
                    explanation=_synthscars_explanation(record.get("caption"), refs),
                    entry=where,
                )
            )
    problems.raise_if_any()
    return items


def _first_gpt_turn(conversations: Any) -> str | None:
    turns = conversations if isinstance(conversations, list) else []
    answers = [turn.get("value") for turn in turns if isinstance(turn, dict) and turn.get("from") == "gpt"]
    return _text(answers[0]) if answers else None


def _read_fakeclue(spec: BenchmarkSpec) -> list[BenchmarkItem]:
    problems = _Problems(spec)
    images, shown, split, entries = _json_entries(spec)
    items = []
    for index, entry in enumerate(entries):
        where = f"{shown} entry {index}"
        if not isinstance(entry, dict):
            problems.add(where, f"expected {{image, label, ...}}, not a {type(entry).__name__}")
            continue
        image, raw_label = _text(entry.get("image")), entry.get("label")
        is_integer = isinstance(raw_label, int) and not isinstance(raw_label, bool)
        label = FAKECLUE_LABELS.get(raw_label) if is_integer else None
        if image is None:
            problems.add(where, "missing required field 'image'")
        if raw_label is None:
            problems.add(where, "missing required field 'label' (FakeClue: 1 = real, 0 = fake)")
        elif label is None:
            problems.add(where, f"unknown label {raw_label!r} (FakeClue: 1 = real, 0 = fake)")
        conversations = entry.get("conversations")
        if conversations is not None and not isinstance(conversations, list):
            problems.add(where, "'conversations' must be a list of {from, value} turns")
        image_path = _absolute(images, image) if image else None
        if image_path is None or label is None or not _require_file(problems, where, image_path, "image"):
            continue
        category = _text(entry.get("cate"))
        items.append(
            BenchmarkItem(
                path=image_path,
                label=label,
                subject=FAKECLUE_SUBJECTS.get(category, category) if category else spec.subject,
                generator=spec.generator,
                split=split,
                explanation=_first_gpt_turn(conversations),
                entry=where,
            )
        )
    problems.raise_if_any()
    return items


READERS: dict[str, Callable[[BenchmarkSpec], list[BenchmarkItem]]] = {
    "folder": _read_folder,
    "manifest": _read_manifest,
    "synthscars": _read_synthscars,
    "fakeclue": _read_fakeclue,
    "builtin": _read_manifest,  # over root/manifest.csv, the spec's default annotations
}
