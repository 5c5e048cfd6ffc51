"""Manifests: a CSV file with a header row, or a JSONL file of one object per line, read into rows.

The one parser of `coe route`'s manifests (coe.ingest) and of benchmark manifests
(benchmarks.readers); each says what its columns mean. A problem with one row costs that row
(`ManifestRow.problem`); a file that cannot be read at all raises `ManifestFormatError`.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json-lines")
MANIFEST_SUFFIXES = CSV_SUFFIXES + JSONL_SUFFIXES
# What JSON itself counts as whitespace: a line of other blanks (U+2028, U+0085) is not empty JSON.
JSON_WHITESPACE = " \t\r"
JSON_TYPE_NAMES = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true or false",
}


class ManifestFormatError(ValueError):
    """A manifest that cannot be read at all; `line` is the line to blame, when one is."""

    def __init__(self, problem: str, line: int | None = None) -> None:
        super().__init__(problem if line is None else f"line {line}: {problem}")
        self.problem = problem
        self.line = line


@dataclass(frozen=True)
class ManifestRow:
    """One data row: the line it ends on, its fields (those without a value left out), or what is
    wrong with it."""

    line: int
    fields: dict[str, object] = field(default_factory=dict)
    problem: str | None = None


def read_manifest_rows(
    path: str | os.PathLike[str], required_columns: Sequence[str], *, keep_undecodable_bytes: bool = False
) -> list[ManifestRow]:
    """Every data row of the CSV or JSONL manifest at `path`, chosen by its suffix.

    A CSV header must name every one of `required_columns` (a JSONL object's keys are the caller's
    to check, row by row). Text is UTF-8, after an optional byte-order mark; with
    `keep_undecodable_bytes`, bytes that are not UTF-8 are kept as lone surrogates (PEP 383, as
    Python spells file names that are not UTF-8) instead of refusing the file.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        expected = f"{', '.join(MANIFEST_SUFFIXES[:-1])} or {MANIFEST_SUFFIXES[-1]}"
        raise ManifestFormatError(f"unknown manifest type {suffix!r}: expected {expected}")
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise ManifestFormatError(f"cannot read: {error.strerror or error}") from None
    text = _decode(data.removeprefix(codecs.BOM_UTF8), keep_undecodable_bytes)
    return _jsonl_rows(text) if suffix in JSONL_SUFFIXES else _csv_rows(text, required_columns)


def _decode(data: bytes, keep_undecodable_bytes: bool) -> str:
    try:
        return data.decode("utf-8", errors="surrogateescape" if keep_undecodable_bytes else "strict")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        problem = f"not UTF-8 text: byte 0x{data[error.start]:02x}: {error.reason}"
        raise ManifestFormatError(problem, line) from None


def _csv_rows(text: str, required_columns: Sequence[str]) -> list[ManifestRow]:
    # newline="": the csv module ends lines itself ("\n", "\r\n", "\r", and never inside a quoted
    # cell), where str.splitlines() would also split a cell at U+2028, U+0085 and the like.
    # strict: a stray quote is an error to report, not a reason to silently merge fields.
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        header = reader.fieldnames
        if not header:
            named = " and ".join(required_columns)
            raise ManifestFormatError(f"empty file: expected a header row naming at least {named}")
        missing = [column for column in required_columns if column not in header]
        if missing:
            problem = f"missing required column {', '.join(missing)} (header: {','.join(header)})"
            raise ManifestFormatError(problem, reader.line_num)
        rows = []
        for row in reader:
            if None in row:
                problem = f"more fields than the header's {len(header)}"
                rows.append(ManifestRow(reader.line_num, problem=problem))
            else:
                # A short row leaves its missing cells None: they carry no value.
                fields = {key: value for key, value in row.items() if value is not None}
                rows.append(ManifestRow(reader.line_num, fields))
        return rows
    except csv.Error as error:
        raise ManifestFormatError(f"bad CSV: {error}", reader.line_num) from None


def _jsonl_rows(text: str) -> list[ManifestRow]:
    rows = []
    # "\n" only ("\r\n" leaves a "\r", which JSON reads as whitespace): a JSON string may hold
    # U+2028, U+2029, U+0085 and the other characters str.splitlines() also breaks lines at.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip(JSON_WHITESPACE):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            rows.append(ManifestRow(number, problem=f"bad JSON: {error.msg} (column {error.colno})"))
            continue
        if not isinstance(row, dict):
            got = JSON_TYPE_NAMES.get(type(row), "null")
            rows.append(ManifestRow(number, problem=f"expected a JSON object, got {got}"))
            continue
        rows.append(ManifestRow(number, {key: value for key, value in row.items() if value is not None}))
    return rows
