"""What to analyse: files and folders named on the command line, plus manifest files.

Discovery only lists paths; it never opens an image. Whether a path is a usable image is
decided later by `coe.core.imaging.read_image`, so every path the user pointed at yields
exactly one output row, good or bad.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from coe.core.errors import UserError
from coe.core.names import is_file_name, readable
from coe.core.records import ErrorCode, ErrorInfo

CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")

# A manifest row as (line number, columns), or (line number, what is wrong with it).
ManifestRow = tuple[int, dict[str, object] | str]


class ManifestError(UserError, ValueError):
    """A manifest that cannot be read at all (a bad row costs only its own row)."""


class IngestItem(BaseModel):
    """One path to analyse, with the manifest's other columns (label, subject, generator...)."""

    model_config = ConfigDict(extra="forbid")

    path: str
    error: ErrorInfo | None = None
    meta: dict[str, str] = {}


def discover(inputs: Sequence[str | Path], manifests: Sequence[str | Path] = ()) -> list[IngestItem]:
    """List every file under `inputs` (folders walked recursively, in sorted order), then every
    row of `manifests`, each path once, in order of first appearance.

    A path listed again (twice on the command line, a file inside a folder also given, or
    a manifest row naming a file already found) keeps its first position; manifest columns
    are added to its `meta` without overriding keys it already has.
    Raises ManifestError for a manifest that cannot be read at all.
    """
    items: dict[str, IngestItem] = {}
    for item in _items_from_inputs(inputs, manifests):
        key = os.path.abspath(item.path)  # lexical: "./a.jpg" and "a.jpg" are one path
        first = items.setdefault(key, item)
        if first is not item:
            first.meta = {**item.meta, **first.meta}
    return list(items.values())


def _items_from_inputs(inputs: Sequence[str | Path], manifests: Sequence[str | Path]) -> Iterator[IngestItem]:
    visited_folders: set[str] = set()
    for given in inputs:
        path = os.fspath(given)
        if os.path.isdir(path):
            yield from _walk_folder(path, visited_folders)
        elif os.path.lexists(path):
            # Any non-folder, broken symlinks and FIFOs included: read_image says what is wrong.
            yield IngestItem(path=path)
        else:
            yield IngestItem(
                path=path,
                error=ErrorInfo(code=ErrorCode.NOT_FOUND, message=f"{path}: no such file or folder"),
            )
    for manifest in manifests:
        yield from read_manifest(manifest)


def _walk_folder(folder: str, visited_folders: set[str]) -> Iterator[IngestItem]:
    """Files under `folder` in sorted order, following symlinked folders once each by their
    real path, so that a link back up the tree cannot loop and an aliased folder is listed once."""
    real_folder = os.path.realpath(folder)
    if real_folder in visited_folders:
        return
    visited_folders.add(real_folder)
    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError as exc:
        yield IngestItem(
            path=folder,
            error=ErrorInfo(code=ErrorCode.UNREADABLE, message=f"{folder}: cannot list folder: {exc}"),
        )
        return
    for entry in entries:
        path = os.path.join(folder, entry.name)
        if _is_folder(entry):
            yield from _walk_folder(path, visited_folders)
        else:
            yield IngestItem(path=path)


def _is_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError:
        return False  # a symlink loop: listed as a file, and read_image reports it


def read_manifest(manifest: str | Path) -> list[IngestItem]:
    """Items from a CSV (header with a `path` column) or JSONL (objects with a `path` key) file.

    Relative paths are relative to the manifest's folder; other columns become `meta`.
    A row without a usable path becomes an item with error `bad_manifest_row`.
    """
    name = os.fspath(manifest)
    suffix = Path(name).suffix.lower()
    if suffix not in CSV_SUFFIXES + JSONL_SUFFIXES:
        raise ManifestError(f"manifest {readable(name)}: unknown type {suffix!r}, expected .csv, .jsonl or .ndjson")
    try:
        # utf-8-sig: spreadsheet programs often start a CSV with a byte-order mark. surrogateescape:
        # bytes that are not UTF-8 are kept as they are, since a path cell may be a file name that
        # is not UTF-8 (and a cell in another encoding then costs its row, not the manifest).
        # newline="": the csv module handles line endings itself, including inside quoted cells.
        with open(name, encoding="utf-8-sig", errors="surrogateescape", newline="") as file:
            text = file.read()
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {readable(name)}: {exc.strerror or exc}") from None
    rows = _csv_rows(text, name) if suffix in CSV_SUFFIXES else _jsonl_rows(text, name)
    folder = os.path.dirname(name)
    return [_manifest_item(row, name, line_number, folder) for line_number, row in rows]


def _csv_rows(text: str, manifest: str) -> list[ManifestRow]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise ManifestError(f"manifest {readable(manifest)}: the CSV header has no 'path' column")
        rows: list[ManifestRow] = []
        for row in reader:
            if None in row:
                rows.append((reader.line_num, "the row has more fields than the header"))
            else:
                # Short rows leave missing cells as None: they carry no value.
                rows.append(
                    (reader.line_num, {key: value for key, value in row.items() if value is not None})
                )
        return rows
    except csv.Error as exc:
        raise ManifestError(f"manifest {readable(manifest)}, line {reader.line_num}: unreadable CSV: {exc}") from None


def _jsonl_rows(text: str, manifest: str) -> list[ManifestRow]:
    rows: list[ManifestRow] = []
    # Split on "\n" only: a JSON string may hold other characters str.splitlines() breaks on.
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append((line_number, f"malformed JSON: {exc}"))
            continue
        if not isinstance(row, dict):
            rows.append((line_number, "the line is not a JSON object"))
            continue
        rows.append((line_number, {key: value for key, value in row.items() if value is not None}))
    return rows


def _as_text(value: object) -> str:
    # Metadata is text; other JSON values keep their JSON spelling (true, 3, [1, 2]).
    return value if isinstance(value, str) else json.dumps(value)


def _manifest_item(row: dict[str, object] | str, manifest: str, line_number: int, folder: str) -> IngestItem:
    problem = row if isinstance(row, str) else _path_problem(row.get("path"))
    if problem is None:
        meta = {key: _as_text(value) for key, value in row.items() if key != "path"}
        # Taken as written: " spaced .jpg" is a file name as good as any.
        return IngestItem(path=os.path.join(folder, row["path"]), meta=meta)
    return IngestItem(
        # Names the row, since there is no image path to show.
        path=f"{manifest}:{line_number}",
        error=ErrorInfo(
            code=ErrorCode.BAD_MANIFEST_ROW, message=readable(f"manifest {manifest}, line {line_number}: {problem}")
        ),
    )


def _path_problem(path: object) -> str | None:
    if path is None or path == "":
        return "the row has no path"
    if not isinstance(path, str):
        return f"the path must be text, got {json.dumps(path)}"
    if not is_file_name(path):
        shown = readable(path).replace("\0", "\\x00")
        return f'the path "{shown}" is not a file name (a NUL, or a lone surrogate that stands for no byte)'
    return None
