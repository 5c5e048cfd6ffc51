"""Discovery of inputs: folder walking, symlinks, duplicates and manifests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from coe.core.records import ErrorCode
from coe.ingest import IngestItem, ManifestError, discover, read_manifest
from tests.bad_files import make_mixed_folder


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def paths(items: list[IngestItem]) -> list[str]:
    return [item.path for item in items]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work from tmp_path so that inputs can be given as relative paths."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_folders_are_walked_recursively_in_sorted_order(in_tmp: Path) -> None:
    for name in ["b.jpg", "a/2.jpg", "a/10.jpg", "a/sub/x.png", "c.txt", ".hidden.png", "B.jpg"]:
        touch(in_tmp / "data" / name)
    (in_tmp / "data" / "empty").mkdir()
    items = discover(["data"])
    assert paths(items) == [
        "data/.hidden.png",
        "data/B.jpg",
        "data/a/10.jpg",
        "data/a/2.jpg",
        "data/a/sub/x.png",
        "data/b.jpg",
        "data/c.txt",
    ]
    assert all(item.error is None and item.meta == {} for item in items)


def test_a_file_input_is_one_item_whatever_it_contains(in_tmp: Path) -> None:
    touch(in_tmp / "notes.txt")
    assert discover(["notes.txt", in_tmp / "notes.txt"]) == [IngestItem(path="notes.txt")]


def test_nonexistent_input_is_an_item_with_not_found(in_tmp: Path) -> None:
    touch(in_tmp / "a.jpg")
    items = discover(["missing.jpg", "a.jpg", "missing_folder/"])
    assert paths(items) == ["missing.jpg", "a.jpg", "missing_folder/"]
    assert items[0].error is not None and items[0].error.code == ErrorCode.NOT_FOUND
    assert "missing.jpg" in items[0].error.message
    assert items[1].error is None
    assert items[2].error is not None and items[2].error.code == ErrorCode.NOT_FOUND


def test_symlinked_folders_are_followed_once_and_loops_terminate(in_tmp: Path) -> None:
    touch(in_tmp / "data" / "a" / "1.jpg")
    touch(in_tmp / "elsewhere" / "far.jpg")
    os.symlink("..", in_tmp / "data" / "a" / "up")  # loop back to data
    os.symlink(".", in_tmp / "data" / "a" / "self")  # loop onto itself
    os.symlink("../elsewhere", in_tmp / "data" / "linked")  # followed, reported by its link name
    os.symlink("a", in_tmp / "data" / "z_alias")  # the same folder again: listed once
    assert paths(discover(["data"])) == ["data/a/1.jpg", "data/linked/far.jpg"]


def test_broken_symlinks_loops_and_fifos_in_a_folder_are_items(in_tmp: Path) -> None:
    (in_tmp / "data").mkdir()
    os.symlink("nowhere.jpg", in_tmp / "data" / "broken.jpg")
    os.symlink("loop.jpg", in_tmp / "data" / "loop.jpg")
    os.mkfifo(in_tmp / "data" / "pipe.jpg")
    items = discover(["data"])
    assert paths(items) == ["data/broken.jpg", "data/loop.jpg", "data/pipe.jpg"]
    assert all(item.error is None for item in items)  # read_image decides what is wrong


def test_the_same_path_reached_twice_appears_once_at_its_first_position(in_tmp: Path) -> None:
    touch(in_tmp / "data" / "a.jpg")
    touch(in_tmp / "data" / "b.jpg")
    touch(in_tmp / "other.jpg")
    items = discover(
        [
            "data/b.jpg",
            "data",
            "./data/a.jpg",
            "other.jpg",
            in_tmp / "data",
            "data/b.jpg",
            "missing.jpg",
            "missing.jpg",
        ]
    )
    assert paths(items) == ["data/b.jpg", "data/a.jpg", "other.jpg", "missing.jpg"]


def test_csv_manifest_paths_are_relative_to_its_folder(in_tmp: Path) -> None:
    touch(in_tmp / "lists" / "images" / "a.jpg")
    absolute = touch(in_tmp / "b.jpg")
    (in_tmp / "lists" / "set.csv").write_text(
        "path,label,generator\n"
        "images/a.jpg,real,\n"
        f"{absolute},fake,sdxl\n"
        ",fake,sdxl\n"
        "images/c.jpg,fake,midjourney,surplus\n"
        '"images/with, comma.jpg",real\n'
    )
    items = discover([], ["lists/set.csv"])
    assert [(item.path, item.meta) for item in items[:2]] == [
        ("lists/images/a.jpg", {"label": "real", "generator": ""}),
        (str(absolute), {"label": "fake", "generator": "sdxl"}),
    ]
    for item, line in [(items[2], 4), (items[3], 5)]:
        assert item.error is not None and item.error.code == ErrorCode.BAD_MANIFEST_ROW
        assert "lists/set.csv" in item.error.message and f"line {line}" in item.error.message
        assert item.path == f"lists/set.csv:{line}"
    assert (items[4].path, items[4].meta) == ("lists/images/with, comma.jpg", {"label": "real"})
    assert len(items) == 5


def test_jsonl_manifest_rows_and_bad_lines(in_tmp: Path) -> None:
    lines = [
        json.dumps({"path": "img/a.jpg", "label": "fake", "subject": "face"}),
        "",
        "{not json",
        json.dumps({"label": "real"}),
        json.dumps(["img/b.jpg"]),
        json.dumps({"path": "/abs/c.png", "score": 3, "flag": True, "note": None}),
    ]
    (in_tmp / "meta").mkdir()
    (in_tmp / "meta" / "set.jsonl").write_text("\n".join(lines) + "\n")
    items = read_manifest(in_tmp / "meta" / "set.jsonl")
    assert [(item.path, item.meta) for item in items if item.error is None] == [
        (str(in_tmp / "meta" / "img" / "a.jpg"), {"label": "fake", "subject": "face"}),
        ("/abs/c.png", {"score": "3", "flag": "true"}),
    ]
    bad = {item.path.rsplit(":", 1)[1]: item.error for item in items if item.error is not None}
    assert sorted(bad) == ["3", "4", "5"]
    assert all(
        error.code == ErrorCode.BAD_MANIFEST_ROW and "set.jsonl" in error.message for error in bad.values()
    )
    assert "bad JSON" in bad["3"].message and "line 3" in bad["3"].message
    assert "no path" in bad["4"].message
    assert "expected a JSON object, got an array" in bad["5"].message


def test_manifest_meta_joins_an_item_found_earlier(in_tmp: Path) -> None:
    touch(in_tmp / "data" / "a.jpg")
    (in_tmp / "data" / "labels.csv").write_text("path,label\na.jpg,real\n")
    items = discover(["data"], ["data/labels.csv"])
    assert [(item.path, item.meta) for item in items] == [
        ("data/a.jpg", {"label": "real"}),
        ("data/labels.csv", {}),
    ]


@pytest.mark.parametrize(
    ("name", "content", "complaint"),
    [
        ("absent.csv", None, "cannot read: No such file"),
        ("nopath.csv", "file,label\na.jpg,real\n", r"line 1: missing required column path \(header: file,label"),
        ("empty.csv", "", "empty file: expected a header row naming at least path"),
        ("list.txt", "path\na.jpg\n", "unknown manifest type '.txt'"),
    ],
)
def test_unusable_manifest_is_a_manifest_error_naming_it(
    in_tmp: Path, name: str, content: str | bytes | None, complaint: str
) -> None:
    if isinstance(content, str):
        (in_tmp / name).write_text(content)
    elif isinstance(content, bytes):
        (in_tmp / name).write_bytes(content)
    with pytest.raises(ManifestError, match=complaint) as raised:
        discover([], [name])
    assert name in str(raised.value)


def test_manifest_cells_are_taken_as_written(in_tmp: Path) -> None:
    """Spaces belong to a file name; bytes that are not UTF-8 cost their row at most (here they are
    a file name that is not UTF-8, which exists); a path that is not text is a bad row."""
    spaced = touch(in_tmp / " spaced .jpg")
    latin = touch(Path(os.fsdecode(bytes(in_tmp) + b"/\xe9t\xe9.jpg")))
    (in_tmp / "cells.csv").write_bytes(b"path,label\n spaced .jpg,real\n\xe9t\xe9.jpg,fake\nok.jpg,real\n")
    items = discover([], ["cells.csv"])
    assert [item.path for item in items] == [" spaced .jpg", os.fsdecode(b"\xe9t\xe9.jpg"), "ok.jpg"]
    assert [Path(item.path).resolve() for item in items[:2]] == [spaced.resolve(), latin.resolve()]
    rows = [
        json.dumps({"path": 5}),
        json.dumps({"path": ["a.jpg"]}),
        '{"path": "lone \\ud800 surrogate.jpg"}',
        '{"path": "nul\\u0000.jpg"}',
        '{"path": "\\udcffcat.jpg", "label": "fake"}',
        json.dumps({"path": ""}),
    ]
    (in_tmp / "cells.jsonl").write_text("\n".join(rows) + "\n")
    items = discover([], ["cells.jsonl"])
    bad = [item.error.message for item in items if item.error is not None]
    assert len(bad) == 5 and all(item.error.code == ErrorCode.BAD_MANIFEST_ROW for item in items if item.error)
    assert "the path must be text, got 5" in bad[0] and "got [\"a.jpg\"]" in bad[1]
    assert "lone \\ud800 surrogate.jpg" in bad[2] and "not a file name" in bad[2] and "not a file name" in bad[3]
    assert "no path" in bad[4]
    good = [item for item in items if item.error is None]
    assert [(os.fsencode(item.path), item.meta) for item in good] == [(b"\xffcat.jpg", {"label": "fake"})]


def test_mixed_folder_is_discovered_exactly(tmp_path: Path) -> None:
    expected = make_mixed_folder(tmp_path / "mixed")
    items = discover([tmp_path / "mixed"])
    assert sorted(paths(items)) == sorted(str(tmp_path / "mixed" / name) for name in expected)
    assert len(items) == len(expected)
