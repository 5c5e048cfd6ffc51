"""What to analyse: files and folders named on the command line, plus manifest files.

Discovery only lists paths; it never opens an image. Whether a path is a usable image is
decided later by `coe.core.imaging.read_image`, so every path the user pointed at yields
exactly one output row, good or bad.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from coe.core.errors import UserError
from coe.core.manifests import ManifestFormatError, ManifestRow, read_manifest_rows
from coe.core.names import is_file_name, readable
from coe.core.records import ErrorCode, ErrorInfo


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
    try:
        # Bytes that are not UTF-8 are kept: a path cell may be a file name that is not UTF-8 (and
        # a cell in another encoding then costs its row, not the manifest).
        rows = read_manifest_rows(name, required_columns=("path",), keep_undecodable_bytes=True)
    except ManifestFormatError as error:
        shown = f"manifest {readable(name)}"
        where = shown if error.line is None else f"{shown}, line {error.line}"
        raise ManifestError(f"{where}: {error.problem}") from None
    folder = os.path.dirname(name)
    return [_manifest_item(row, name, folder) for row in rows]


def _as_text(value: object) -> str:
    # Metadata is text; other JSON values keep their JSON spelling (true, 3, [1, 2]).
    return value if isinstance(value, str) else json.dumps(value)


def _manifest_item(row: ManifestRow, manifest: str, folder: str) -> IngestItem:
    problem = row.problem or _path_problem(row.fields.get("path"))
    if problem is None:
        meta = {key: _as_text(value) for key, value in row.fields.items() if key != "path"}
        # Taken as written: " spaced .jpg" is a file name as good as any.
        return IngestItem(path=os.path.join(folder, row.fields["path"]), meta=meta)
    return IngestItem(
        # Names the row, since there is no image path to show.
        path=f"{manifest}:{row.line}",
        error=ErrorInfo(
            code=ErrorCode.BAD_MANIFEST_ROW, message=readable(f"manifest {manifest}, line {row.line}: {problem}")
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
