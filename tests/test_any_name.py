"""Any byte sequence a file system allows in a name goes through `coe route` (the real CLI, the
real files): judged or given an error row of its own, written to the ledger, results.jsonl,
results.csv and the report as valid UTF-8, exactly recoverable, shown readably, and resumed."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bad_files import photo
from test_route import COE, cli_settings
from test_run_report import open_report

from coe.core.names import exact_bytes, from_name_bytes, readable
from coe.core.records import Verdict
from coe.ledger import LEDGER_FILE
from coe.results import RESULTS_CSV, RESULTS_JSONL

# Raw names (bytes), each a different image; None marks a file that is not an image.
NAMES: dict[bytes, str | None] = {
    b"ok.jpg": "JPEG",
    b"\xffcat.jpg": "JPEG",  # 0xff is never UTF-8
    b"caf\xe9.png": "PNG",  # Latin-1, as an old camera card or a Windows share writes it
    b"half \xe2\x82.png": "PNG",  # a UTF-8 sequence cut short
    b"new\nline and\ttab.png": "PNG",
    b"\x1b[31mred\x1b[0m [bold]x :smile: [red.png": "PNG",  # terminal escapes, rich markup, an emoji code
    "日本語 ünïcödé.png".encode(): "PNG",
    b"not an image \xfe.jpg": None,
}


def make_folder(folder: Path) -> dict[bytes, Path]:
    folder.mkdir()
    made = {}
    for index, (name, format_name) in enumerate(NAMES.items()):
        path = Path(os.fsdecode(bytes(folder) + b"/" + name))
        if format_name is None:
            path.write_bytes(b"this is text, not pixels\n" * 20)
        else:
            # Distinct images, so that none is a duplicate of another.
            photo(96 + 8 * index, 96).save(path, format=format_name)
        made[name] = path
    return made


def run_route(config, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*COE, "route", *arguments, "--no-progress", *cli_settings(config)],
        capture_output=True, timeout=300,
    )


def test_every_name_is_judged_written_losslessly_and_resumed(tmp_path, trained_config):
    made = make_folder(tmp_path / "in")
    [markup] = [name for name in NAMES if b"[bold]" in name]
    nested = tmp_path / "in" / "[" / "x]"  # a path whose text is "[/x]"
    nested.parent.mkdir()
    shutil.copy(made[b"ok.jpg"], nested)
    manifest = tmp_path / "list.jsonl"
    # A JSONL manifest names a file that is not UTF-8 as Python's json reads it back: \udcXX.
    target = made[b"\xffcat.jpg"]
    manifest.write_text(json.dumps({"path": str(target), "subject": "cat \udcff"}, ensure_ascii=True) + "\n")
    out = tmp_path / "out [/x]"
    first = run_route(trained_config, str(tmp_path / "in"), "--manifest", str(manifest), "--out", str(out))
    assert first.returncode == 0, first.stderr.decode(errors="replace")

    expected = {os.fsdecode(bytes(path)) for path in [*made.values(), nested]}
    text = (out / RESULTS_JSONL).read_bytes().decode("utf-8")  # strict: valid UTF-8
    rows = [Verdict.model_validate_json(line) for line in text.splitlines()]  # pydantic's strict JSON
    assert {row.path for row in rows} == expected and len(rows) == len(expected)
    for row in rows:
        raw = json.loads(next(line for line in text.splitlines() if json.loads(line)["path"] == readable(row.path)))
        assert raw["path"] == readable(row.path)
        assert raw.get("path_bytes") == exact_bytes(row.path)
        assert Path(row.path).exists()  # the path read back opens the file
        name = os.fsencode(row.path).rsplit(b"/", 1)[1]
        if NAMES.get(name, "JPEG") is None:
            assert row.error is not None and row.error.code == "not_an_image"
            assert readable(row.path) in row.error.message
        else:
            assert row.error is None and row.label in {"real", "fake", "uncertain"}, (row.path, row.error)
            assert row.image.path == row.path
    by_path = {row.path: row for row in rows}
    first_seen, copy = os.fsdecode(bytes(nested)), os.fsdecode(bytes(made[b"ok.jpg"]))  # "[" sorts before "o"
    assert by_path[copy].duplicate_of == first_seen and by_path[first_seen].duplicate_of is None
    ledger = [Verdict.model_validate_json(line) for line in (out / LEDGER_FILE).read_bytes().decode().splitlines()]
    assert {row.path for row in ledger} == expected

    table = list(csv.DictReader(io.StringIO((out / RESULTS_CSV).read_bytes().decode("utf-8"), newline="")))
    assert len(table) == len(expected)
    for cells in table:
        path = from_name_bytes(cells["path_bytes"]) if cells["path_bytes"] else cells["path"]
        assert path in expected and cells["path"] == readable(path)
    assert sum(bool(cells["path_bytes"]) for cells in table) == 4  # \xff, \xe9, the cut sequence, \xfe

    # Shown readably: the summary names the out folder as it is (markup and all) on stderr.
    assert readable(str(out)) in " ".join(first.stderr.decode().split())
    assert b"MarkupError" not in first.stderr

    again = run_route(trained_config, str(tmp_path / "in"), "--manifest", str(manifest), "--out", str(out))
    assert again.returncode == 0, again.stderr.decode(errors="replace")
    assert f"every one of the {len(expected)} paths was judged" in " ".join(again.stderr.decode().split())
    extra = Path(os.fsdecode(bytes(tmp_path / "in") + b"/late \xfa.png"))
    photo(200, 96).save(extra, format="PNG")
    resumed = run_route(trained_config, str(tmp_path / "in"), "--manifest", str(manifest), "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr.decode(errors="replace")
    assert f"resuming: {len(expected)} of {len(expected) + 1}" in " ".join(resumed.stderr.decode().split())
    ledger_paths = [Verdict.model_validate_json(line).path for line in (out / LEDGER_FILE).read_text().splitlines()]
    assert sorted(ledger_paths) == sorted([*expected, os.fsdecode(bytes(extra))])  # each path once
    assert markup in {os.fsencode(path).rsplit(b"/", 1)[1] for path in ledger_paths}


@pytest.mark.browser
def test_the_report_shows_names_that_are_not_utf8_readably_and_links_their_files(page, tmp_path, trained_config):
    made = make_folder(tmp_path / "in")
    out = tmp_path / "out"
    result = run_route(trained_config, str(tmp_path / "in"), "--out", str(out))
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    open_report(page, out)
    assert page.events.problems() == []
    shown = page.inner_text("#gallery")
    for name in made:
        assert readable(os.fsdecode(name)).split("\n")[0] in shown
    links = page.eval_on_selector_all("#gallery a.path", "nodes => nodes.map(n => n.href)")
    assert any(link.endswith("/in/%FFcat.jpg") for link in links), links
    errors = page.eval_on_selector_all("#error-list tbody tr", "rows => rows.map(r => r.cells[1].textContent)")
    assert errors == [readable(os.fsdecode(bytes(made[b"not an image \xfe.jpg"])))]


def test_record_paths_round_trip_through_json_exactly():
    name = os.fsdecode(b"/data/\xff\xfe name.jpg")
    verdict = Verdict(path=name, duplicate_of=os.fsdecode(b"/data/\xc3.jpg"))
    document = json.loads(verdict.model_dump_json())
    assert document["path"] == "/data/\\xff\\xfe name.jpg"
    assert base64.b64decode(document["path_bytes"]) == b"/data/\xff\xfe name.jpg"
    assert base64.b64decode(document["duplicate_of_bytes"]) == b"/data/\xc3.jpg"
    assert Verdict.model_validate_json(verdict.model_dump_json()) == verdict
    plain = Verdict(path="/data/ordinary é.jpg")
    assert "path_bytes" not in json.loads(plain.model_dump_json())
    assert "path_bytes" in Verdict.model_json_schema(mode="serialization")["properties"]


@pytest.mark.skipif(sys.platform != "linux", reason="names are bytes on Linux file systems")
def test_readable_spells_each_byte_that_is_not_utf8():
    assert readable(os.fsdecode(b"a\xffb\xe9")) == "a\\xffb\\xe9"
    assert readable("lone \ud800") == "lone \\ud800"
    assert readable("日本") == "日本"


def test_a_benchmark_of_such_names_runs_and_trains_a_router_on_the_exact_files(tmp_path, trained_config):
    root = tmp_path / "bench"
    for label, shift in (("real", 0), ("fake", 50)):
        folder = root / os.fsdecode(b"gen\xe9") / label if label == "fake" else root / label
        folder.mkdir(parents=True)
        for index in range(10):
            name = os.fsdecode(b"img \xff%d.png" % index if index % 2 else b"img %d.png" % index)
            photo(96 + 4 * (index + shift), 96).save(folder / name, format="PNG")
    spec = tmp_path / "odd.yaml"
    spec.write_text(f"name: odd\nreader: folder\nroot: {json.dumps(str(root))}\nfolder_names: generator\n")
    settings = cli_settings(trained_config)
    bench = subprocess.run(
        [*COE, "bench", "run", str(spec), "--out", str(tmp_path / "runs"), "--expert", "dct", "--expert", "spectrum",
         "--expert", "residual", "--no-progress", *settings],
        capture_output=True, timeout=300,
    )
    assert bench.returncode == 0, bench.stderr.decode(errors="replace")
    from benchmarks.outcomes import image_file, read_outcomes

    frame = read_outcomes([tmp_path / "runs" / "outcomes.parquet"])
    files = [image_file(path, exact) for path, exact in zip(frame["path"], frame["path_bytes"], strict=True)]
    assert frame["error"].isna().all() and all(Path(file).is_file() for file in files)
    assert frame["path_bytes"].notna().sum() == 3 * 15  # five odd names among the reals, every fake (gen\xe9)
    router = subprocess.run(
        [*COE, "router", "train", str(tmp_path / "runs" / "outcomes.parquet"), "--out", str(tmp_path / "router"),
         "--no-progress", *settings],
        capture_output=True, timeout=300,
    )
    assert router.returncode == 0, router.stderr.decode(errors="replace")
    assert b"cannot be read" not in router.stderr  # every sample's image was found by its exact path
