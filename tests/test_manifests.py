"""One manifest parser (coe.core.manifests) behind both readers of labelled manifests: `coe route`'s
inputs (coe.ingest) and benchmark manifests (benchmarks.readers). Names and cells holding the
characters str.splitlines() breaks lines at must come through whole."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.readers import BenchmarkSpec, read_benchmark
from coe.core.manifests import ManifestFormatError, read_manifest_rows
from coe.ingest import read_manifest

# U+2028 LINE SEPARATOR, U+2029 PARAGRAPH SEPARATOR and U+0085 NEXT LINE end a line for
# str.splitlines(), never for JSON or CSV; the last name is valid UTF-8 that only looks like the
# \xNN spelling coe gives bytes that are not (with a decomposed accent and a character beyond the BMP).
ODD_ROWS = [
    {
        "path": "line\u2028separator.png",
        "label": "fake",
        "subject": "face\u2028close-up",
        "generator": "g\u2029x",
    },
    {"path": "paragraph\u2029separator.png", "label": "real", "explanation": "first\u2029second"},
    {"path": "next\x85line.png", "label": "fake", "generator": "next\x85gen"},
    {"path": "cafe\u0301 \\xff \\udcff \U0001f600.png", "label": "real", "subject": "\\x85 spelled"},
]


def write_rows(manifest: Path) -> list[int]:
    """The manifest holding ODD_ROWS, and the line each row is on."""
    if manifest.suffix == ".csv":
        columns = ["path", "label", "subject", "generator", "explanation"]
        with open(manifest, "w", encoding="utf-8", newline="") as file:
            writer = csv.DictWriter(file, columns)  # quotes none of these cells: the characters stay bare
            writer.writeheader()
            writer.writerows(ODD_ROWS)
        return [2, 3, 4, 5]
    lines = [json.dumps(row, ensure_ascii=False) for row in ODD_ROWS]  # the characters as they are, unescaped
    # "\r\n" after the first row and a blank line after the second: both are tolerated.
    manifest.write_text(f"{lines[0]}\r\n{lines[1]}\n\n{lines[2]}\n{lines[3]}\n", encoding="utf-8", newline="")
    return [1, 2, 4, 5]


@pytest.fixture(params=["odd.jsonl", "odd.csv"])
def odd_manifest(request, tmp_path: Path) -> tuple[Path, list[int]]:
    for row in ODD_ROWS:
        Image.new("RGB", (40, 40), (120, 30, 200)).save(tmp_path / row["path"], format="PNG")
    manifest = tmp_path / request.param
    return manifest, write_rows(manifest)


def test_the_parser_splits_lines_only_where_the_format_does(odd_manifest):
    manifest, lines = odd_manifest
    rows = read_manifest_rows(manifest, required_columns=("path", "label"))
    assert [row.problem for row in rows] == [None] * len(ODD_ROWS)
    assert [row.line for row in rows] == lines
    assert [{key: value for key, value in row.fields.items() if value} for row in rows] == ODD_ROWS


def test_route_inputs_keep_odd_names_and_cells_whole(odd_manifest):
    manifest, _ = odd_manifest
    items = read_manifest(manifest)
    assert [item.error for item in items] == [None] * len(ODD_ROWS)
    assert [item.path for item in items] == [os.path.join(manifest.parent, row["path"]) for row in ODD_ROWS]
    assert all(os.path.isfile(item.path) for item in items)
    expected_meta = [{key: value for key, value in row.items() if key != "path"} for row in ODD_ROWS]
    assert [{key: value for key, value in item.meta.items() if value} for item in items] == expected_meta


def test_benchmark_items_keep_odd_names_and_cells_whole(odd_manifest):
    manifest, lines = odd_manifest
    spec = BenchmarkSpec(name="odd", reader="manifest", root=manifest.parent, annotations=manifest.name)
    items = {item.path.name: item for item in read_benchmark(spec)}
    assert sorted(items) == sorted(row["path"] for row in ODD_ROWS)
    for row, line in zip(ODD_ROWS, lines, strict=True):
        item = items[row["path"]]
        assert (item.label, item.entry) == (row["label"], f"{manifest.name} line {line}")
        assert (item.subject, item.generator) == (
            row.get("subject", "unknown"),
            row.get("generator", "unknown"),
        )
        assert item.explanation == row.get("explanation")


def test_a_line_of_other_blanks_is_not_an_empty_json_line(tmp_path):
    manifest = tmp_path / "blank.jsonl"
    manifest.write_text('{"path": "a.png", "label": "real"}\n\u2028\n', encoding="utf-8")
    first, second = read_manifest_rows(manifest, required_columns=("path", "label"))
    assert first.problem is None and second.line == 2 and second.problem.startswith("bad JSON")


def test_text_that_is_not_utf8_names_its_line_or_is_kept_where_asked(tmp_path):
    manifest = tmp_path / "latin.csv"
    manifest.write_bytes(b"path,label\nok.png,real\n\xe9t\xe9.png,fake\n")
    with pytest.raises(ManifestFormatError, match=r"line 3: not UTF-8 text: byte 0xe9"):
        read_manifest_rows(manifest, required_columns=("path",))
    kept = read_manifest_rows(manifest, required_columns=("path",), keep_undecodable_bytes=True)
    assert os.fsencode(kept[1].fields["path"]) == b"\xe9t\xe9.png"
